"""The core of latentdub: contracts and orchestration; it imports no plugin.

Subpackages, in the order the data flows through ``dub`` (each may import
only the ones listed before it, never ``latentdub.plugins`` or the CLI):

* :mod:`.core` - the plugin framework: hook specs, the plugin manager,
  protocols, data types, typed configs and presets, component building,
  weights, devices, errors, output files;
* :mod:`.media` - video and audio in and out (ffmpeg), speech phones;
* :mod:`.faces` - alignment into the generator crop, tracking one face,
  mouth and face masks;
* :mod:`.dubbing` - the ``dub``/``animate`` pipeline and its timeline;
* :mod:`.learning` - Stage 1 training and Stage 2 tuning drivers, datasets,
  the perceptual loss, identity profiles;
* :mod:`.evaluation` - frame pairing, running metrics, reports;
* :mod:`.batch` - manifests, the journal, executors, the batch driver.

``latentdub.nets`` (plain torch models and their checkpoint formats) sits
below all of them. See docs/architecture.md.
"""
