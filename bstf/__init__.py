"""bstf: batch-size engineering for TensorFlow/Keras.

What batch size, what learning rate, and how to grow the batch: LR-batch
coupling (Goyal et al. 2017), noise-scale plans that trade LR decay for batch
growth (Smith et al. 2017), gradient accumulation correct on every
tf.distribute strategy, large-batch optimizers, and measurement tools.
"""

__version__ = "0.1.0"

from bstf import schedules
from bstf.clock import Clock
from bstf import plan
from bstf.plan import NoiseScalePlan
from bstf import data, distribute, finder, optimizers, training, tuner
from bstf.training import NonFiniteLossError, fit
from bstf.evaluation import evaluate
from bstf import tags
from bstf.finder import find_batch_size
from bstf import analysis, callbacks
from bstf import layers
