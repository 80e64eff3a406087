"""Dask: lazy sign / pack_bits / unpack_bits / binary_matmul, and BNNClassifier
under dask-ml on a real two-process dask.distributed cluster."""

import os
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array", reason="needs dask: pip install 'xnorcore[dask]'")
import dask  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import matmul_ref, random_matrix, sign_ref  # noqa: E402
from xnorcore import BNNClassifier, PackedBits, binary_matmul, pack_bits, sign, unpack_bits  # noqa: E402

# Graphs run on the calling thread unless a test asks for the cluster.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture
def sync():
    with dask.config.set(scheduler="synchronous"):
        yield


def _chunks(draw, n):
    """A chunk size that splits an axis of length n into 1 to 4 blocks: the
    graph of a product grows as the product of the block counts."""
    return -(-n // draw(st.integers(1, 4)))


@st.composite
def _matmul_case(draw):
    m, k, n = (draw(st.integers(1, 140)) for _ in range(3))
    return (m, k, n), (_chunks(draw, m), _chunks(draw, k)), (_chunks(draw, k), _chunks(draw, n)), draw(
        st.integers(0, 2**32 - 1)
    )


# -- lazy ops, no cluster -----------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=_matmul_case(), kind=st.sampled_from(["dask-dask", "dask-numpy", "numpy-dask",
                                                  "dask-packed", "packed-dask", "daskpacked-dask",
                                                  "dask-daskpacked", "daskpacked-daskpacked"]))
def test_lazy_binary_matmul_is_exact(sync, case, kind):
    (m, k, n), a_chunks, b_chunks, seed = case
    rng = np.random.default_rng(seed)
    A = random_matrix(rng, (m, k), np.float32, special=0.1)
    B = random_matrix(rng, (k, n), np.float64, special=0.1)
    left, right = kind.split("-")
    a = {"dask": da.from_array(A, chunks=a_chunks), "numpy": A, "packed": pack_bits(A, axis=1),
         "daskpacked": pack_bits(da.from_array(A, chunks=a_chunks), axis=1)}[left]
    b = {"dask": da.from_array(B, chunks=b_chunks), "numpy": B, "packed": pack_bits(B, axis=0),
         "daskpacked": pack_bits(da.from_array(B, chunks=b_chunks), axis=0)}[right]
    c = binary_matmul(a, b)
    assert isinstance(c, da.Array) and c.dtype == np.int32 and c.shape == (m, n)
    # Output blocks follow the rows of a and the columns of b where they are dask.
    if left in ("dask", "daskpacked"):
        assert c.chunks[0] == da.from_array(A, chunks=a_chunks).chunks[0]
    if right in ("dask", "daskpacked"):
        assert c.chunks[1] == da.from_array(B, chunks=b_chunks).chunks[1]
    result = c.compute()
    assert result.dtype == np.int32
    np.testing.assert_array_equal(result, matmul_ref(A, B))
    np.testing.assert_array_equal(result, binary_matmul(A, B))


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8, np.int8, np.int64, np.float16, np.float32])
def test_lazy_binary_matmul_dtypes(sync, rng, dtype):
    A = random_matrix(rng, (65, 130), dtype)
    B = random_matrix(rng, (130, 63), dtype)
    c = binary_matmul(da.from_array(A, chunks=(20, 50)), da.from_array(B, chunks=(33, 30)))
    np.testing.assert_array_equal(c.compute(), matmul_ref(A, B))


@pytest.mark.parametrize("shape", [(0, 5, 3), (4, 0, 3), (4, 5, 0)])
def test_lazy_binary_matmul_empty(sync, shape):
    m, k, n = shape
    c = binary_matmul(da.zeros((m, k), chunks=2), da.zeros((k, n), chunks=2))
    result = c.compute()
    assert result.shape == (m, n) and result.dtype == np.int32
    np.testing.assert_array_equal(result, np.full((m, n), k, dtype=np.int32))


def _poison(block):
    raise AssertionError("a block was computed while the graph was built")


def test_graph_build_computes_nothing():
    a = da.ones((100, 70), chunks=(30, 20)).map_blocks(_poison, meta=np.empty((0, 0)))
    b = da.ones((70, 40), chunks=(25, 15)).map_blocks(_poison, meta=np.empty((0, 0)))
    c = binary_matmul(a, b)
    assert c.dtype == np.int32 and isinstance(c._meta, np.ndarray) and c._meta.dtype == np.int32
    assert c.chunks == ((30, 30, 30, 10), (15, 15, 10))
    packed = pack_bits(a, axis=1)
    unpack_bits(packed)
    sign(a)
    binary_matmul(packed, np.ones((70, 3)))
    with pytest.raises(AssertionError, match="while the graph was built"):
        c.compute(scheduler="synchronous")


def test_nan_is_reported_lazily_with_its_block(sync, rng):
    A = random_matrix(rng, (50, 130), np.float32)
    A[42, 100] = np.nan
    B = random_matrix(rng, (130, 10), np.float32)
    c = binary_matmul(da.from_array(A, chunks=(20, 64)), B)  # builds without error
    with pytest.raises(ValueError, match=r"a must not contain NaN \(found in a\[40:50, 64:128\]\)"):
        c.compute()
    B[3, 7] = np.nan
    c = binary_matmul(A[:40], da.from_array(B, chunks=(64, 5)))
    with pytest.raises(ValueError, match=r"b must not contain NaN \(found in b\[0:64, 5:10\]\)"):
        c.compute()
    with pytest.raises(ValueError, match="x must not contain NaN"):
        pack_bits(da.from_array(A, chunks=64), axis=1).words.compute()
    with pytest.raises(ValueError, match="x must not contain NaN"):
        sign(da.from_array(A, chunks=64)).compute()


def test_eager_errors_name_the_argument():
    a = da.ones((4, 5), chunks=2)
    with pytest.raises(ValueError, match=r"matching inner dimensions, got a.shape=\(4, 5\) and b.shape=\(6, 2\)"):
        binary_matmul(a, np.ones((6, 2)))
    with pytest.raises(ValueError, match="b must be 2-D"):
        binary_matmul(a, da.ones(5, chunks=2))
    with pytest.raises(TypeError, match="a must have a boolean, integer or real floating dtype"):
        binary_matmul(a.astype(np.complex64), np.ones((5, 2)))
    with pytest.raises(ValueError, match="b must be packed along axis=0"):
        binary_matmul(a, pack_bits(np.ones((5, 2)), axis=1))
    with pytest.raises(ValueError, match="backend must be one of"):
        binary_matmul(a, np.ones((5, 2)), backend="tpu")
    with pytest.raises(ValueError, match="n_threads must be None or a positive integer"):
        binary_matmul(a, np.ones((5, 2)), n_threads=0)
    unknown = a[a[:, 0] > 0]
    with pytest.raises(ValueError, match="a has unknown chunk sizes"):
        binary_matmul(unknown, np.ones((5, 2)))
    with pytest.raises(ValueError, match="out of bounds"):
        pack_bits(a, axis=2)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.lists(st.integers(1, 150), min_size=1, max_size=3).filter(lambda s: np.prod(s) <= 50_000),
       data=st.data())
def test_lazy_pack_bits_matches_numpy(sync, shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    chunks = tuple(_chunks(data.draw, s) for s in shape)
    x = random_matrix(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))), tuple(shape), np.float32, 0.1)
    lazy = pack_bits(da.from_array(x, chunks=chunks), axis=axis)
    eager = pack_bits(x, axis=axis)
    assert (lazy.shape, lazy.axis, lazy.words.shape) == (eager.shape, eager.axis, eager.words.shape)
    np.testing.assert_array_equal(lazy.words.compute(), eager.words)
    np.testing.assert_array_equal(unpack_bits(lazy).compute(), unpack_bits(eager))
    np.testing.assert_array_equal(sign(da.from_array(x, chunks=chunks)).compute(), sign_ref(x))


def test_pack_bits_keeps_word_aligned_chunks_and_rounds_others(sync):
    x = da.ones((10, 300), chunks=(5, 128))
    assert pack_bits(x, axis=1).words.chunks == ((5, 5), (2, 2, 1))
    x = da.ones((10, 300), chunks=(5, 100))
    assert pack_bits(x, axis=1).words.chunks == ((5, 5), (2, 2, 1))
    x = da.ones((300, 10), chunks=(30, 4))
    assert pack_bits(x, axis=0).words.chunks == ((4, 4, 2), (1, 1, 1, 1, 1))


# -- a real cluster: two worker processes, one thread each --------------------


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed", reason="needs distributed: pip install 'xnorcore[dask]'")
    with dask.config.set({"distributed.comm.timeouts.connect": "30s",
                          "distributed.deploy.lost-worker-timeout": "30s"}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None, timeout="60s")
        pids = []
        try:
            with distributed.Client(cluster, timeout="60s") as c:
                c.wait_for_workers(2, timeout=60)
                pids = list(c.run(os.getpid).values())
                yield c
        finally:
            cluster.close(timeout=30)
    # No worker process outlives the tests.
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), f"worker processes {pids} still running"


def _alive(pid):
    import psutil  # a dependency of distributed

    try:
        # A zombie has exited; only its parent's wait is missing.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X[:800].astype(np.float32), y[:800]


DASK_ML_MISSING = "needs dask-ml: pip install dask-ml (the test extra installs it)"

SMALL = dict(hidden_layer_sizes=(32,), max_iter=5, batch_size=64, random_state=0, device="cpu")


def test_cluster_binary_matmul_is_exact(client, rng):
    A = random_matrix(rng, (300, 200), np.float32, special=0.1)
    B = random_matrix(rng, (200, 90), np.float32, special=0.1)
    a = da.from_array(A, chunks=(70, 64))
    b = da.from_array(B, chunks=(100, 40))
    expected = matmul_ref(A, B)
    np.testing.assert_array_equal(client.compute(binary_matmul(a, b)).result(timeout=60), expected)
    np.testing.assert_array_equal(binary_matmul(a, pack_bits(B, axis=0)).compute(), expected)
    # Words persisted on the workers, reused by later products.
    packed = pack_bits(a, axis=1)
    packed = PackedBits(client.persist(packed.words), packed.shape, packed.axis)
    np.testing.assert_array_equal(binary_matmul(packed, b).compute(), expected)
    A[250, 150] = np.nan
    with pytest.raises(ValueError, match=r"a must not contain NaN \(found in a\[210:280, 128:192\]\)"):
        binary_matmul(da.from_array(A, chunks=(70, 64)), b).compute()


def test_parallel_post_fit_predicts_as_locally(client, digits):
    wrappers = pytest.importorskip("dask_ml.wrappers", reason=DASK_ML_MISSING)
    X, y = digits
    clf = wrappers.ParallelPostFit(BNNClassifier(**SMALL)).fit(X, y)
    local = clf.estimator.predict(X)
    X_d = da.from_array(X, chunks=(150, -1))
    lazy = clf.predict(X_d)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), local)
    np.testing.assert_allclose(clf.predict_proba(X_d).compute(), clf.estimator.predict_proba(X))


def test_incremental_trains_over_chunks(client, digits):
    wrappers = pytest.importorskip("dask_ml.wrappers", reason=DASK_ML_MISSING)
    X, y = digits
    X_d, y_d = da.from_array(X, chunks=(200, -1)), da.from_array(y, chunks=200)
    inc = wrappers.Incremental(BNNClassifier(**SMALL), scoring="accuracy", shuffle_blocks=False)
    for _ in range(3):
        inc.partial_fit(X_d, y_d, classes=np.arange(10))
    # Four chunks per pass, three passes: one partial_fit epoch per chunk.
    assert len(inc.estimator_.loss_curve_) == 12
    assert inc.estimator_.loss_curve_[-1] < inc.estimator_.loss_curve_[0]
    # The same partial_fit calls on the same chunks, locally, give the same model.
    local = BNNClassifier(**SMALL)
    for _ in range(3):
        for start in range(0, len(X), 200):
            local.partial_fit(X[start:start + 200], y[start:start + 200], classes=np.arange(10))
    np.testing.assert_array_equal(inc.predict(X_d).compute(), local.predict(X))
    assert inc.score(X_d, y_d) > 0.5


def test_grid_search_under_joblib_dask_backend(client, digits):
    import joblib
    from sklearn.model_selection import GridSearchCV

    X, y = digits
    grid = {"hidden_layer_sizes": [(16,), (32,)], "learning_rate_init": [1e-3, 1e-2]}
    search = GridSearchCV(BNNClassifier(**SMALL), grid, cv=2, n_jobs=-1)
    with joblib.parallel_backend("dask", wait_for_workers_timeout=60):
        search.fit(X, y)
    local = GridSearchCV(BNNClassifier(**SMALL), grid, cv=2, n_jobs=1).fit(X, y)
    assert search.best_params_ == local.best_params_
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"])
    # The work ran on the workers, not here.
    assert any(client.run(lambda: __import__("sys").modules.get("xnorcore") is not None).values())


def _readme_block(index):
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parent.parent / "README.md"
    if not readme.exists():
        pytest.skip("needs the source checkout's README.md")
    section = readme.read_text().split("\n## Beyond one machine\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)[index]


def test_readme_snippets_run_as_written(client, monkeypatch, capsys):
    import dask.distributed

    # The snippets' Client() is the cluster of these tests.
    monkeypatch.setattr(dask.distributed, "Client", lambda *args, **kwargs: client)
    exec(compile(_readme_block(0), "README.md", "exec"), {})
    totals = capsys.readouterr().out
    assert totals.startswith("[") and len(totals.split()) >= 256
    pytest.importorskip("dask_ml.wrappers", reason=DASK_ML_MISSING)
    exec(compile(_readme_block(1), "README.md", "exec"), {})
    assert "hidden_layer_sizes" in capsys.readouterr().out


def test_backend_gpu_without_a_gpu_says_so_at_graph_build():
    from xnorcore._backends.gpu import unavailable_reason

    if unavailable_reason() is None:
        pytest.skip("this machine has a usable GPU")
    with pytest.raises(RuntimeError, match="backend='gpu'"):
        binary_matmul(da.ones((4, 5), chunks=2), np.ones((5, 3)), backend="gpu")
