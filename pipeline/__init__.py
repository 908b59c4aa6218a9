"""layerprobe.pipeline: what is done with cached features (it imports `features`, never the reverse).

* `config/`: experiment configs, TOML in, frozen and checked dataclasses out
  (without importing scikit-learn, h5py or Keras);
* `classifier_grids` (the classifier and preprocessing names, default grids and
  searchable parameters), `classifiers` (their scikit-learn pipelines and
  `fit_classifier`), `probes/` (closed-form ridge, LogME, the multi-layer probe),
  `layer_features` (`LayerFeatures`: cached features as a scikit-learn transformer);
* `evaluate` (the held-out score, once), `uncertainty` (standard errors and
  intervals), `persistence` (saved classifiers and their sidecars), `predict`
  (a saved classifier applied to new images);
* `finetune/`: end-to-end training of a backbone, and the train-from-scratch baseline;
* `run/`: config-driven batch runs (`run_experiment`); `cluster` (the dask client
  of a run); `default_experiment` (the run without a config);
* `results` (the results table), `tables` (text tables), `plots` (its figures),
  `advice` (which transfer mode to use, with the evidence);
* `cli`: the `layerprobe` command, the only place that turns exceptions into messages.
"""
