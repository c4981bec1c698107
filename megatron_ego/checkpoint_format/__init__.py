"""The checkpoint file format, below both training and export: how checkpoint files reach the
disk and come back (``files``: durable writes, safe loads), the ``COMPLETE`` manifest that says a
checkpoint is whole (``manifest``), and the run folder's layout (``layout``: step folders,
``latest``, the run id, which checkpoint to take). It imports nothing from training, export,
eval, model, data or losses: the trainer writes this format, export and evaluation read it.
"""
