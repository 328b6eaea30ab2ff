"""The example stream of a :func:`bstf.fit` run: seeded, position-addressable, batched per phase.

The run reads one stream of examples: epoch after epoch of the training set, each shuffled with the run's
seed. The order is a function of the seed and the position only, so a stream rebuilt at a phase change or
after a resume continues exactly where the run was. It is cut into batches of the phase's physical batch
with ``drop_remainder`` (static shapes: one trace per physical batch, as TPUs and ``jit_compile`` want).
"""

import numpy as np
import tensorflow as tf

REPLAY_LIMIT = 20_000_000  # runs up to this many examples replay one reshuffled stream (see ExampleStream)


def epoch_seed(seed, epoch):
    """The shuffle seed of epoch ``epoch`` of a run seeded ``seed`` (a Python int in [1, 2**31 - 1])."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0] % (2**31 - 1)) + 1


class ExampleStream:
    """The run's stream of examples from any position.

    Args:
      dataset: the unbatched training set (``train_size`` examples).
      train_size: N.
      seed: the run's shuffle seed.
      run_examples: the examples of the whole run (the same for every stream of a run: it picks the
        construction, see :meth:`examples`).
      shuffle: reshuffle every epoch (seeded); False reads the data in order.
      shuffle_buffer: the shuffle buffer (default: the whole training set).
    """

    def __init__(self, dataset, train_size, seed, run_examples, *, shuffle=True, shuffle_buffer=None):
        self.dataset, self.train_size, self.seed = dataset, train_size, seed
        self.run_examples, self.shuffle = run_examples, shuffle
        self.buffer = min(shuffle_buffer or train_size, train_size)

    def examples(self, start, end):
        """Examples ``start`` to (at least) ``end`` of the stream.

        Two constructions, chosen by the run's size:

        * up to ``REPLAY_LIMIT`` examples: one seeded ``shuffle`` reshuffled every epoch and repeated,
          replayed from the start and skipped to ``start`` — Keras's own pipeline shape, the cheapest per
          example; a rebuild replays at most the run's examples;
        * beyond: epoch ``e`` is ``dataset`` shuffled with :func:`epoch_seed` ``(seed, e)``, so any epoch is
          rebuilt without replaying the ones before it (Python-int seeds: tensor seeds break when the
          global seed is 0).
        """
        n = self.train_size
        if self.run_examples <= REPLAY_LIMIT:
            stream = (self.dataset.shuffle(self.buffer, seed=epoch_seed(self.seed, 0), reshuffle_each_iteration=True)
                      if self.shuffle else self.dataset).repeat()
            return stream.skip(start) if start else stream
        first_epoch, offset = divmod(int(start), n)
        last_epoch = -(-int(end) // n)  # exclusive
        epochs = [self.dataset.shuffle(self.buffer, seed=epoch_seed(self.seed, e), reshuffle_each_iteration=False)
                  if self.shuffle else self.dataset for e in range(first_epoch, last_epoch)]
        if len(epochs) == 1:
            stream = epochs[0]
        else:  # flat concatenation: epoch i's examples in order, then epoch i + 1's
            choice = tf.data.Dataset.range(len(epochs)).flat_map(lambda i: tf.data.Dataset.from_tensors(i).repeat(n))
            stream = tf.data.Dataset.choose_from_datasets(epochs, choice, stop_on_empty_dataset=True)
        return stream.skip(offset) if offset else stream

    def batches(self, start, end, physical_batch):
        """The stream's batches of ``physical_batch`` examples (static shape) from example ``start`` on."""
        return self.examples(start, end).batch(physical_batch, drop_remainder=True)

    def iterator(self, strategy, start, end, physical_batch):
        """An iterator over :meth:`batches`, distributed over ``strategy``'s replicas and workers."""
        ds = self.batches(start, end, physical_batch).prefetch(tf.data.AUTOTUNE)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
        if strategy.num_replicas_in_sync > 1 or strategy.extended._in_multi_worker_mode():
            ds = strategy.experimental_distribute_dataset(ds)
        return iter(ds)
