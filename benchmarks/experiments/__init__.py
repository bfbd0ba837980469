"""One-off measurements behind a default, each made on training cells only (an inner split or
simulated data), never on the cells a benchmark scores. Each script prints its table;
``benchmarks/experiments/results/`` keeps the output of the run a default was chosen from."""
