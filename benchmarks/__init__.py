"""Speed benchmarks (their records are in eval/bench/). Run from the repository root as
`python -m benchmarks.NAME --help`; the captioner package never imports this folder.
"""
