"""scikit-learn's own estimator checks on BNNClassifier."""

from sklearn.utils.estimator_checks import check_param_validation, parametrize_with_checks

from xnorcore import BNNClassifier

# Small and quick: the checks fit dozens of times on tiny data sets.
_ESTIMATOR = BNNClassifier(hidden_layer_sizes=(32,), max_iter=30, batch_size=32, random_state=0,
                           device="cpu")

# With conv layers: rows of X are then 1-pixel-high images of n_features pixels.
_CONV_ESTIMATOR = BNNClassifier(hidden_layer_sizes=(32,), conv_layers=(8, (8, (1, 2))), max_iter=30,
                                batch_size=32, random_state=0, device="cpu")

# Checks that cannot pass, with the reason.
EXPECTED_FAILED_CHECKS = {}


@parametrize_with_checks([_ESTIMATOR, _CONV_ESTIMATOR],
                         expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


def test_declared_parameter_constraints():
    """Every parameter is declared in _parameter_constraints, and fit and partial_fit reject invalid values."""
    check_param_validation("BNNClassifier", _ESTIMATOR)
    check_param_validation("BNNClassifier", _CONV_ESTIMATOR)
