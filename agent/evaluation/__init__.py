"""Real failures to diagnose: the failure library used by the demo, the benchmarks and the tests."""
