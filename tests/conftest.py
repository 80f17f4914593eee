"""Shared fixtures: simulators and repositories live in tests/fixtures/ and are registered here."""

pytest_plugins = [
    "tests.fixtures.certs",
    "tests.fixtures.hyperv",
    "tests.fixtures.hyperv_lab",
    "tests.fixtures.redis",
    "tests.fixtures.repos",
    "tests.fixtures.vcsim",
]
