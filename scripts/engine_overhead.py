"""Engine overhead on CPU: items/s of Pool.map with an identity model (torch imported); arg: plain | freeze."""
import gc, sys, time, torch, torchvision  # a realistic heap: torch + torchvision imported
from gpufleet import Pool
def f(b): return b
mode = sys.argv[1]
with Pool(f, cpu_devices=1, max_batch_size=64, max_wait_ms=1) as pool:
    if mode == "freeze":
        gc.freeze()
    list(pool.map(range(2000)))
    best = 0
    for _ in range(3):
        t = time.perf_counter(); n = sum(1 for _ in pool.map(range(60000))); best = max(best, n / (time.perf_counter() - t))
    print(mode, "items/s", round(best), "gc counts", gc.get_count(), "frozen", gc.get_freeze_count())
