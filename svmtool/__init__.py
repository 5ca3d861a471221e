"""svmtool: the multi-class linear SVM on CIFAR-10, from the terminal."""

__version__ = "0.1.0"
