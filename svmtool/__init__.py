"""svmtool: the multi-class linear SVM on CIFAR-10, from the terminal.

``svmtool.check_gradient(f, W, X, y)`` checks a CS231n-style loss function
from Python (a notebook); see its docstring. It is imported on first use, so
``import svmtool`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["check_gradient"]


def __getattr__(name: str):
    if name == "check_gradient":
        from svmtool.usercheck import check_gradient

        return check_gradient
    raise AttributeError(f"module 'svmtool' has no attribute {name!r}")
