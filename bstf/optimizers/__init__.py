"""Optimizers for large batches: accumulation on any strategy, SGD with schedulable momentum, LARS, LAMB."""

from keras.optimizers import Lamb

from bstf.optimizers.accumulate import Accumulate, LossScaledAccumulate
from bstf.optimizers.lars import LARS
from bstf.optimizers.sgd import SGD
