import numpy as np
import pytest


def _has_gpu():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


HAS_GPU = _has_gpu()


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module of a backend: numpy always, cupy where a GPU is lent."""
    if request.param == "numpy":
        return np
    if not HAS_GPU:
        pytest.skip("no CUDA device / cupy")
    import cupy

    return cupy


@pytest.fixture
def store_path(tmp_path):
    return str(tmp_path / "K.zarr")
