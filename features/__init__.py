"""layerprobe.features: images in, cached layer features out (inputs, backbones, extraction, store).

Data flows one way: `inputs` (datasets, decoding) -> `backbones`/`weights`/`layers`/`truncate`
(the truncated model) -> `extract` -> `store`. Nothing here imports `layerprobe.pipeline`,
and importing this package imports nothing else.
"""
