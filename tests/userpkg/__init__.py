"""A stand-in for a user's own package of networks, defined outside the arena (tests of the
``import`` architecture and of model files trained elsewhere: tests/test_user_models.py)."""
