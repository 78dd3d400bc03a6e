"""Capacity planning: model arithmetic from a config, the GPU table, and per-arm memory, time and cost estimates.

- ``architecture``: parameter counts and training FLOPs per token from a config (stdlib only);
- ``hardware``: each GPU product's memory and dense bf16 peak;
- ``facts``: the configs of the models the shipped experiments name (planning works offline);
- ``estimate``: peak memory per device, part by part, for fine-tuning and generation;
- ``plan``: the plan of a spec (``bakeoff plan``, the fit check of ``bakeoff validate``).
"""
