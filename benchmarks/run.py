"""`make bench` entry point (placeholder until the benchmarks issue lands)."""
if __name__ == "__main__":
    print("fastmvit bench: the benchmark suites and the dashboard are not written yet; "
          "they will run here (CUDA timings where a GPU is found, modeled bytes otherwise).")
