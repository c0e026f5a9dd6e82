"""The plugin framework: hook specs, plugin manager, protocols, data types, configs, presets, building, weights, devices, errors.

Imports nothing of latentdub outside this folder. The default plugins are
known here only by module name (:data:`.plugins.DEFAULT_PLUGINS`) and are
loaded like third-party ones.
"""
