"""Switching: deciding which models are awake on each GPU and changing that.

`switcher` (requests in, switches out, one single flight per model), `plan` (the pure
decision), `transitions` (how one sleep, wake or start runs and fails), `startup`
(reconciliation and bootstrap), `group` (one GPU's lock and phase), `single_flight`.
"""
