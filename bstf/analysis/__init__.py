"""Measurement of what batch size does.

* Gradient noise scale B_simple (McCandlish et al. 2018): :func:`noise_scale`,
  the estimators :func:`estimate_noise_scale` and :class:`NoiseScaleAverager`.
* Adaptive batch size from B_simple with the LR coupled: :class:`AdaptiveBatch`.
* Goodput (Pollux): :class:`GoodputBatch` picks the batch maximising throughput × statistical efficiency,
  from a :class:`ThroughputModel` and :class:`GradientStatistics`; AdaScale's :func:`adascale_gain`,
  :func:`statistical_efficiency`, :class:`AdaScaleProgress`, :class:`ControlledLearningRate`.
* Sharpness of a minimiser (Keskar et al. 2017): :func:`sharpness`, :func:`sharpness_of`.
* 1-D interpolation between two solutions: :func:`interpolate`, :func:`plot_interpolation`.
* Top Hessian eigenvalue by power iteration: :func:`hessian_top_eigenvalue`, :func:`top_eigenvalue_of`.
* Training dynamics (Shen): :func:`distance_from_init`, :func:`gradient_histogram`.

The matching callbacks are in :mod:`bstf.callbacks`. See docs/analysis.md.
"""

from bstf.analysis.adaptive import AdaptiveBatch
from bstf.analysis.dynamics import (Distance, GradientHistogramResult, distance_from_init, gradient_histogram,
                                    trainable_weights)
from bstf.analysis.goodput import (AdaScaleProgress, ControlledLearningRate, GoodputBatch, GoodputDecision,
                                   GradientStatistics, ThroughputFit, ThroughputModel, adascale_gain,
                                   statistical_efficiency)
from bstf.analysis.hessian import TopEigenvalue, hessian_top_eigenvalue, power_iteration, top_eigenvalue_of
from bstf.analysis.interpolation import InterpolationResult, interpolate, interpolate_weights, plot_interpolation
from bstf.analysis.noise_scale import (NoiseScaleAverager, NoiseScaleEstimate, NoiseScaleResult, estimate_grad_norm_sq,
                                       estimate_noise_scale, estimate_trace_sigma, noise_scale)
from bstf.analysis.sharpness import SharpnessResult, random_subspace, sharpness, sharpness_of
