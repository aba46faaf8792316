"""Tenants: who may call genmedia, and how much.

``schema`` (the tenants file, its validation, the development default), ``keys`` (API key format,
hashing, new keys), ``auth`` (401/403 of every ``/v1`` call), ``ratelimit`` (per-tenant token
buckets). Pure: no Ray, no torch, no I/O beyond reading the tenants file.
"""
