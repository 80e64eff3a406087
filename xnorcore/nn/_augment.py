"""Training-time augmentation of image rows: random translations."""

import numpy as np

from .._array import get_array_module

__all__ = ["RandomShift", "recommended_shift"]

_F32 = np.float32


def recommended_shift(image_shape):
    """The largest shift that ``random_shift="auto"`` gives images of ``image_shape``: a 14th of the shorter side.

    2 pixels for 28x28 MNIST digits and 32x32 images; 0 (no augmentation)
    for images shorter than 14 pixels.
    """
    return min(image_shape[:2]) // 14


class RandomShift:
    """Translate each image of a minibatch by a random whole number of pixels.

    The rows are standardized images, ``(image - mean) / scale`` flattened in
    NHWC order; each one moves by ``dy`` rows and ``dx`` columns, both drawn
    uniformly from ``[-max_shift, max_shift]``, and the pixels that the move
    uncovers are 0 in the units of the raw images (the background of digits
    and the zero padding of convolutions).

    Parameters
    ----------
    image_shape : tuple (H, W, C)
    max_shift : int
        Largest move along either axis, >= 1.
    mean : ndarray of shape (H * W * C,)
        The standardization's per-feature mean (numpy or cupy, float32).
    scale : float
        The standardization's scale.
    """

    def __init__(self, image_shape, max_shift, mean, scale):
        self.image_shape = tuple(int(s) for s in image_shape)
        self.max_shift = int(max_shift)
        self.mean = mean.reshape(self.image_shape)
        self.scale = _F32(scale)

    def __call__(self, x, rng):
        """Shifted copies of the rows ``x``; ``rng`` (a RandomState of x's array module) draws the moves."""
        xp = get_array_module(x)
        h, w, c = self.image_shape
        s = self.max_shift
        n = x.shape[0]
        padded = xp.zeros((n, h + 2 * s, w + 2 * s, c), dtype=_F32)
        padded[:, s:s + h, s:s + w] = x.reshape(n, h, w, c) * self.scale + self.mean
        # An offset of s leaves the image where it was.
        offsets = rng.randint(0, 2 * s + 1, size=(2, n))
        rows = offsets[0][:, None] + xp.arange(h)
        columns = offsets[1][:, None] + xp.arange(w)
        out = padded[xp.arange(n)[:, None, None], rows[:, :, None], columns[:, None, :]]
        out -= self.mean
        out /= self.scale
        return out.reshape(n, h * w * c)


def check_shift(random_shift, image_shape, conv):
    """The largest shift to train with: ``random_shift`` (the estimator's parameter) resolved.

    ``image_shape`` is that of the images the rows hold (None for rows that
    are no images), ``conv`` whether the network has conv layers: "auto"
    shifts (:func:`recommended_shift`) only images that a CNN reads.
    """
    if random_shift == "auto":
        return recommended_shift(image_shape) if conv and image_shape is not None else 0
    random_shift = int(random_shift)
    if random_shift == 0:
        return 0
    if image_shape is None:
        raise ValueError(f"random_shift={random_shift} moves images: give image_shape, or X of "
                         "shape (n_samples, height, width, channels)")
    if random_shift >= min(image_shape[:2]):
        raise ValueError(f"random_shift={random_shift} must be smaller than the height and the width "
                         f"of the images, got image shape {tuple(image_shape)}")
    return random_shift
