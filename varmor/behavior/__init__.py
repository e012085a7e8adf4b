"""Behaviour modelling (pure): what a workload did, as AppArmor rules.

`model` holds the typed rules and their wire form; `observe` turns one ALLOWED audit
record into a rule; `generalise` rewrites per-process, per-boot and random path parts
so a model converges instead of growing; `profile` turns a model into a deny-by-default
profile body; `advise` checks catalog rules against a model.
"""
