#!/usr/bin/env bash
# The array half of scripts/demo (`scripts/demo array`): run from the
# repository root after the packages are installed and shoal is built.
set -euo pipefail
LAB=scripts/lab
DIR=/tmp/shoal-lab

echo "==> bringing up the CARP array: 3 hosts (config/examples/carp.toml), a Squid per host, origin 10.0.0.250"
"$LAB" up --array spec
python3 - "$DIR/demo.urls" <<'PY'
import random, sys
r = random.Random(2026)
sites = ["www.lab.example", "img.lab.example", "api.lab.example", "cdn.lab.example", "origin.lab.example"]
with open(sys.argv[1], "w") as f:
    for i in range(3000):
        f.write("http://%s/demo/%d/%010x.html\n" % (r.choice(sites), i, r.randrange(1 << 40)))
PY
mark() { wc -l <"$DIR/origin.log"; }
echo "==> 3000 URLs through the VIP 10.0.0.100:8080 as the clients' proxy, twice"
m0=$(mark)
"$LAB" client proxy --urls "$DIR/demo.urls" --per-url >"$DIR/demo-1.json"
m1=$(mark)
"$LAB" client proxy --urls "$DIR/demo.urls" --per-url >"$DIR/demo-2.json"
m2=$(mark)
echo "==> SIGKILL of host 1's shoal (its Squid stays up, unreachable through the array)"
"$LAB" kill-host 1
"$LAB" wait --members 2,3 --timeout 60 >/dev/null
echo "==> the same 3000 URLs again"
"$LAB" client proxy --urls "$DIR/demo.urls" --per-url >"$DIR/demo-3.json"
m3=$(mark)

status=0
python3 - "$DIR" "$m0" "$m1" "$m2" "$m3" <<'PY' || status=$?
import json, sys
d, m0, m1, m2, m3 = sys.argv[1], *map(int, sys.argv[2:])
passes = [{r["url"]: r for r in json.load(open("%s/demo-%d.json" % (d, i)))["results"]} for i in (1, 2, 3)]
origin = [l.split("\t")[0] for l in open(d + "/origin.log").read().splitlines()]
fetched = [origin[m0:m1], origin[m1:m2], origin[m2:m3]]
urls = list(passes[0])
ok = True
def served(p):
    out = {}
    for r in p.values():
        out[r.get("served_by", "-")] = out.get(r.get("served_by", "-"), 0) + 1
    return out
share = served(passes[0])
print()
print("  %-22s %10s %8s" % ("member", "URLs owned", "share"))
for name, n in sorted(share.items()):
    print("  %-22s %10d %7.1f%%" % (name, n, 100.0 * n / len(urls)))
per_url = {}
for u in fetched[0]:
    per_url[u] = per_url.get(u, 0) + 1
hist = {}
for u in urls:
    hist[per_url.get(u, 0)] = hist.get(per_url.get(u, 0), 0) + 1
print()
print("  origin fetches per URL, first pass: %s" % ", ".join("%d URLs fetched %dx" % (n, k) for k, n in sorted(hist.items())))
hits = sum(1 for r in passes[1].values() if r.get("cache") == "HIT")
print("  second pass: %d of %d hits, origin fetches %d" % (hits, len(urls), len(fetched[1])))
ok &= hist == {1: len(urls)} and hits == len(urls) and not fetched[1]
ok &= all(r.get("status") == 200 for p in passes for r in p.values())
moved = {}
for u in urls:
    a, b = passes[0][u].get("served_by"), passes[2][u].get("served_by")
    if a != b:
        moved[(a, b)] = moved.get((a, b), 0) + 1
print()
print("  after host 1's death:")
for (a, b), n in sorted(moved.items()):
    print("    %5d URLs moved %s -> %s" % (n, a, b))
victim = [name for name in share if name.startswith("cache1")]
stray = sum(n for (a, _b), n in moved.items() if a not in victim)
print("    %5d URLs of the other members moved; origin fetched %d URLs again (host 1 owned %d)"
      % (stray, len(fetched[2]), sum(share.get(v, 0) for v in victim)))
ok &= stray == 0 and len(fetched[2]) == sum(n for n in moved.values())
sys.exit(0 if ok else 1)
PY
cat <<'TXT'

The lab is still up (host 1's shoal is down). Try:
  scripts/lab start-host 1                             # host 1 rejoins; its URLs come back
  scripts/lab exec client curl -s http://10.0.0.100:8080/array.dll?Get.Info.v1   # the membership table
  scripts/lab exec client curl -s http://10.0.0.100:8080/proxy.pac              # the PAC routing script
  scripts/lab exec client curl -s -x 10.0.0.100:8080 -D - -o /dev/null http://www.lab.example/x
  tail /tmp/shoal-lab/origin.log /tmp/shoal-lab/squid-h2/access.log
Tear it down with:  scripts/lab down
TXT
exit $status
