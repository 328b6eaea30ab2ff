"""Keras callbacks of bstf (one module per concept)."""

from bstf.callbacks.noise_scale import NoiseScaleMonitor
from bstf.callbacks.dynamics import DistanceFromInit, GradientHistogram
from bstf.callbacks.plan import FollowPlan
