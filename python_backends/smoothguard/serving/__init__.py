"""Serving operations: the supervisor that runs tritonserver, its gateway, the stub watchdog and
the test harness's server handle."""
