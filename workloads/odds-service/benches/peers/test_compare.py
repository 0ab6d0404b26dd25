"""compare.py's reading of ws-load's output and its verdict against Bun: what `make
bench-fanout` reports for issue #25's relative targets (run by `make test`)."""
import os
import sys
import tempfile
import unittest
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

# ws-load's summary as it prints it (load a, 2026-12-07), with the figures as parameters.
OUTPUT = """ws-load: 1000 clients, 25 events, 5000 updates/s target, 15.0 s
  connect+subscribe: 1.3 s
  published: 75050 (5003/s)
  delivered: 3002000 (200102 msgs/s; {share}% of 3002000 fan-out, rest conflated)
  latency publish->receive: p50 13.35 ms, p99 {p99} ms, p99.9 58.30 ms (50 us buckets)
  ordering: {ordering} frames not newer than one already received for their (event, market) (1050 clients, 50 of them subscribed mid-stream)
  service CPU: 12.08 s (0.78 cores), {cpu} us per delivered message (user 0.74 + system 3.28)
  ws-load's own CPU (clients + publisher): 13.61 s ({own} cores of 2)
  machine idle: 13.4 %
{warning}  service RSS: idle 8532 KiB, with clients 18120 KiB (9.6 KiB/client), peak 20136 KiB
"""


# What ws-load adds when its own CPU reached its limit (`NEAR_A_CORE` in ws_load.rs).
WARNING = ("  WARNING: ws-load itself used >= 0.9 of a core: delivery rate and latency may be the "
           "load generator's limit, not the service's\n")


def output(cpu, p99, own=0.5, share=100.0, ordering=0, warned=False):
    return OUTPUT.format(cpu=cpu, p99=p99, own=own, share=share, ordering=ordering,
                         warning=WARNING if warned else "")


def runs(*texts):
    return [compare.parse(t) for t in texts]


class ParseTest(unittest.TestCase):
    def test_every_figure_of_the_summary_is_read(self):
        parsed = compare.parse(output(4.02, 42.10, own=0.88, share=99.5, ordering=7))
        self.assertEqual(parsed["cpu"], [4.02, 0.74, 3.28])
        self.assertEqual(parsed["share"], [99.5])
        self.assertEqual(parsed["rate"], [200102.0])
        self.assertEqual(parsed["latency"], [13.35, 42.10])
        self.assertEqual(parsed["ordering"], [7.0])
        self.assertEqual(parsed["idle"], [13.4])
        self.assertEqual(parsed["own"], [0.88])
        self.assertEqual(parsed["rss"], [9.6])
        self.assertNotIn("generator_limited", parsed)
        self.assertIn("generator_limited", compare.parse(output(4.02, 42.10, warned=True)))


class AgainstPeerTest(unittest.TestCase):
    def test_below_bun_and_no_worse_from_the_medians(self):
        results = {
            ("ours", "e"): runs(output(13.0, 3.4), output(12.0, 3.6), output(99.0, 3.5)),
            ("bun", "e"): runs(output(15.0, 3.9), output(16.0, 3.8), output(14.0, 3.7)),
        }
        verdict = compare.against_peer(results, "e")
        self.assertIn("CPU per delivery 0.87 (13.00 vs 15.00 µs: below)", verdict)
        self.assertIn("p99 0.92 (3.50 vs 3.80 ms: no worse)", verdict)
        self.assertNotIn("may have set the pace", verdict)

    def test_above_bun_and_a_busy_load_generator_are_said(self):
        results = {
            ("ours", "a"): runs(output(4.4, 63.0, own=0.98, warned=True)),
            ("bun", "a"): runs(output(4.2, 55.0, own=0.91, warned=True)),
        }
        verdict = compare.against_peer(results, "a")
        self.assertIn("4.40 vs 4.20 µs: NOT below", verdict)
        self.assertIn("63.00 vs 55.00 ms: WORSE", verdict)
        self.assertIn("ws-load used up to 0.98 cores", verdict)

    def test_a_missing_figure_gives_no_verdict_rather_than_a_wrong_one(self):
        without_p99 = compare.parse(output(4.0, 40.0).replace("p99 40.0 ms", "p99 (none)"))
        results = {("ours", "a"): [without_p99], ("bun", "a"): runs(output(4.2, 55.0))}
        self.assertIn("no verdict against bun", compare.against_peer(results, "a"))

    def test_no_verdict_without_both_servers(self):
        results = {("ours", "a"): runs(output(4.4, 63.0))}
        self.assertIsNone(compare.against_peer(results, "a"))
        self.assertIsNone(compare.against_peer(results, "e"))


class SavedTest(unittest.TestCase):
    def test_saved_outputs_are_read_back_per_server_and_load(self):
        with tempfile.TemporaryDirectory() as folder:
            # Run 10 of a longer set than `--runs` says, written before run 2.
            for name, run, cpu in [("ours", 1, 4.0), ("ours", 10, 9.0), ("ours", 2, 5.0),
                                   ("bun", 1, 6.0)]:
                with open(os.path.join(folder, f"{name}-a-{run}.txt"), "w") as f:
                    f.write(output(cpu, 40.0))
            args = SimpleNamespace(saved=folder, runs=3, loads="a,e", servers="ours,bun,node")
            results = compare.saved(args)
            self.assertEqual(sorted(results), [("bun", "a"), ("ours", "a")])
            self.assertEqual([r["cpu"][0] for r in results[("ours", "a")]], [4.0, 5.0, 9.0])


if __name__ == "__main__":
    unittest.main()
