"""The common core of layerprobe: small pieces every other module uses.

* `errors`: the `LayerprobeError` tree, for problems a user can fix;
* `checks`: argument checks and "did you mean" suggestions;
* `atomic`: atomic file writes (a temporary name, then a rename);
* `files`: whole-file reads of regular files only, up to a size cap;
* `lazy`: lazy package exports (PEP 562), so packages import nothing heavy;
* `digests`: the canonical content digests of arrays and files;
* `versions`: installed library versions, from the distributions' metadata;
* `cores`: the cores this process may use (affinity mask, cgroup CPU quota);
* `lock_files`: lock files opened without following links, with their holder.

They import nothing else of layerprobe, so any module may import them.
"""
