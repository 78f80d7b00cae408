import os
import sys

sys.path.insert(0, os.path.dirname(__file__))


def pytest_addoption(parser):
    parser.addoption("--native-lib", default=None,
                     help="load torchrec_ext's ops from this library instead of the built ones "
                          "(scripts/sanitize.sh passes its AddressSanitizer build)")


def pytest_configure(config):
    lib = config.getoption("--native-lib")
    if lib:  # before any test module imports torchrec_ext, so the ops come from `lib`
        import torch

        torch.ops.load_library(lib)
