"""CUDA sources of the GPU backend, read at run time by xnorcore._backends.gpu."""
