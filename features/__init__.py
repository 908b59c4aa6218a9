"""layerprobe.features: images in, cached layer features out.

Data flows one way, and nothing here imports `layerprobe.pipeline`:

* `inputs/`: labelled datasets (folders, CSV manifests, arrays), their digests,
  safe decoding in background threads;
* `registry` (`BackboneSpec`, one per Keras applications family), `backbone`
  (`load_backbone`: the built model and the digest of its weights), `model_files`
  (any saved Keras model as a backbone), `layers` (selectable layers and their
  aliases), `truncate` (one multi-output model, pooled inside the graph);
* `keys` (`FeatureKey`, the content-addressed cache key, and the storage dtypes
  and digest modes it names), `plans` (a run's keys without building a backbone),
  `environment` (the numerics environment recorded beside each entry);
* `extract` (`FeatureExtractor`: every layer in one forward pass, into the store),
  `chunks` (the chunk protocol it shares with the cluster path), `device` (the
  compiled forward pass per Keras backend), `cluster_extraction` (the same
  chunks as tasks on a dask cluster);
* `store/`: the HDF5 feature store, one committed file per key, safe against
  killed writers;
* `backend` (the one contact with Keras internals), `seeding` (scoped seeding);
* `core/`: the common core of the whole package (errors, checks, atomic writes,
  lazy exports, digests, installed versions).

Importing this package imports nothing else.
"""
