"""populate() of a 1 GiB lazy clone vs the eager clone of the same region,
alternating, 5 each (issue 10's target: lazy clone + populate() >= 0.9x the
eager clone).  python3 benchmarks/populate_vs_eager.py"""
import os
import statistics
import sys
import time
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import pvmmap
from child import Source
GiB = 1 << 30
s = Source([dict(name="r", kind="anon", size=GiB, seed=3)])
a = s.addr["r"]
pvmmap.clone(s.pid, a, 1 << 20).close()
res = {"eager": [], "lazy+populate": []}
for rep in range(5):
    for name in (("eager", "lazy+populate") if rep % 2 == 0 else ("lazy+populate", "eager")):
        t0 = time.perf_counter()
        if name == "eager":
            m = pvmmap.clone(s.pid, a, GiB, method="copy")
        else:
            m = pvmmap.clone(s.pid, a, GiB, method="lazy")
            m.populate()
        dt = time.perf_counter() - t0
        m.close()
        res[name].append(dt)
s.close()
e, l = statistics.median(res["eager"]), statistics.median(res["lazy+populate"])
print({k: [round(x * 1e3) for x in v] for k, v in res.items()})
print(f"median eager {e*1e3:.0f} ms, lazy+populate {l*1e3:.0f} ms, ratio eager/lazy {e/l:.2f}")
