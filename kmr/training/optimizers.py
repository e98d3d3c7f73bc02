"""Lazy (row-sparse) Adam: updates only the embedding rows a batch looked up.

Keras' `keras.optimizers.Adam` turns a gathered gradient (a ``tf.IndexedSlices`` over
the few rows a batch used) into a dense update of the whole table and of its two
moment tables, every step: at batch 256 on MovieLens that dense work was most of the
step time. `LazyAdam` applies the Adam rule to the looked-up rows only (the update of
``tensorflow_addons.optimizers.LazyAdam``): rows not in the batch keep their value and
their moments, instead of drifting on stale momentum. Dense gradients (other
backends, or dense weights) get the ordinary Adam step.

Example:
    >>> import keras, numpy as np
    >>> table = keras.Variable(np.ones((4, 2), "float32"))
    >>> optimizer = LazyAdam(learning_rate=0.1)
    >>> import tensorflow as tf
    >>> grad = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([1, 1]), tf.constant([4, 2]))
    >>> optimizer.apply([grad], [table])
    >>> np.round(table.numpy().astype(float), 3).tolist()  # only row 1 moved
    [[1.0, 1.0], [0.9, 0.9], [1.0, 1.0], [1.0, 1.0]]
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="kmr")
class LazyAdam(keras.optimizers.Adam):
    """Adam whose update of a row-sparse gradient touches only those rows.

    Same arguments as `keras.optimizers.Adam` (``amsgrad`` applies to dense
    gradients only).
    """

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One Adam step; sparse for ``tf.IndexedSlices``, Keras' own otherwise."""
        if not _is_indexed_slices(gradient):
            super().update_step(gradient, variable, learning_rate)
            return
        import tensorflow as tf

        dtype = variable.dtype
        step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        alpha = (
            ops.cast(learning_rate, dtype)
            * ops.sqrt(1 - ops.power(beta_2, step))
            / (1 - ops.power(beta_1, step))
        )
        # A row looked up twice in a batch appears twice: sum first, update once.
        rows, position = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(
            ops.cast(gradient.values, dtype), position, tf.shape(rows)[0]
        )
        index = self._get_variable_index(variable)
        m, v = self._momentums[index], self._velocities[index]
        m_rows = beta_1 * tf.gather(m.value, rows) + (1 - beta_1) * grad
        v_rows = beta_2 * tf.gather(v.value, rows) + (1 - beta_2) * ops.square(grad)
        self.assign(m, tf.IndexedSlices(m_rows, rows))
        self.assign(v, tf.IndexedSlices(v_rows, rows))
        step_rows = alpha * m_rows / (ops.sqrt(v_rows) + self.epsilon)
        self.assign_sub(variable, tf.IndexedSlices(step_rows, rows))


def _is_indexed_slices(value: Any) -> bool:
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return isinstance(value, tf.IndexedSlices)
