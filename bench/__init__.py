"""Benchmarks: each ``bench/<name>.py`` with ``main()`` prints ratios against a baseline measured in the same run."""
