"""pullcache benchmarks (see bench/README.md)."""
