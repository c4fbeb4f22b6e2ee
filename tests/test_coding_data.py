"""Checks data/coding_eval.jsonl: schema, and a reference solution passes every problem's tests."""

import json

from tasks import CODING_EVAL_FILE as DATA_PATH
from sandbox import pass_fractions

# One short reference solution per problem, keyed by line index in the file.
REFERENCE_SOLUTIONS = {
    0: "print(sum(x for x in map(int, input().split()) if x % 2 == 0))",
    1: "t, *a = map(int, input().split())\nprint(sum(x > t for x in a))",
    2: "a = list(map(int, input().split()))\nprint(max(a) - min(a))",
    3: "print(*reversed(input().split()))",
    4: "print(len(set(map(int, input().split()))))",
    5: ("import itertools\n"
        "print(*itertools.accumulate(map(int, input().split())))"),
    6: ("a = sorted(set(map(int, input().split())))\n"
        "print(a[-2] if len(a) > 1 else -1)"),
    7: "a = list(map(int, input().split()))\nprint(sum(y > x for x, y in zip(a, a[1:])))",
    8: "import math\na, b = map(int, input().split())\nprint(math.gcd(a, b))",
    9: "print(sum(int(d) for d in input().strip()))",
    10: "n = int(input())\nprint(sum(n % d == 0 for d in range(1, n + 1)))",
    11: ("a = input().split()\nbest = run = 1\n"
         "for i in range(1, len(a)):\n"
         "    run = run + 1 if a[i] == a[i - 1] else 1\n"
         "    best = max(best, run)\n"
         "print(best)"),
    12: ("a = input().split()\nonce = [x for x in a if a.count(x) == 1]\n"
         "print(*once if once else [-1])"),
    13: "k, *a = map(int, input().split())\nk %= len(a)\nprint(*(a[k:] + a[:k]))",
    14: ("def prime(n):\n"
         "    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))\n"
         "print(sum(prime(x) for x in map(int, input().split())))"),
    15: ("n, steps = int(input()), 0\n"
         "while n != 1:\n"
         "    n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
         "    steps += 1\n"
         "print(steps)"),
    16: ("a = list(map(int, input().split()))\nbest = cur = a[0]\n"
         "for x in a[1:]:\n"
         "    cur = max(x, cur + x)\n"
         "    best = max(best, cur)\n"
         "print(best)"),
    17: ("a = sorted(map(int, input().split()))\n"
         "print(*([x for x in a if x % 2] + [x for x in a if x % 2 == 0]))"),
    18: "a = list(map(int, input().split()))\nprint(sum(a[0::2]) - sum(a[1::2]))",
    19: ("t, *a = map(int, input().split())\n"
         "print(sum(a[i] + a[j] == t for i in range(len(a)) for j in range(i + 1, len(a))))"),
    20: "print(bin(int(input())).count('1'))",
    21: "lo, hi, *a = map(int, input().split())\nprint(*(min(max(x, lo), hi) for x in a))",
    22: ("a = list(map(int, input().split()))\n"
         "print(min(a, key=lambda x: (-a.count(x), x)))"),
    23: "a = list(map(int, input().split()))\nprint(a.index(max(a)) + 1)",
    24: "print(sum(x % 3 == 0 and x % 5 != 0 for x in map(int, input().split())))",
    25: "a = input().split()\nprint(int(a == a[::-1]))",
    26: ("a = list(map(int, input().split()))\n"
         "print(sum(a[i - 1] < a[i] > a[i + 1] for i in range(1, len(a) - 1)))"),
}


def load_problems():
    with open(DATA_PATH, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_schema():
    problems = load_problems()
    assert len(problems) >= 24
    for item in problems:
        assert isinstance(item["problem"], str)
        for section in ("Problem Description:", "Input:", "Output:"):
            assert section in item["problem"]
        assert len(item["tests"]) >= 5
        for test in item["tests"]:
            assert isinstance(test["input"], str) and isinstance(test["output"], str)


def test_reference_solutions_pass_every_test():
    problems = load_problems()
    assert sorted(REFERENCE_SOLUTIONS) == list(range(len(problems)))
    codes = [REFERENCE_SOLUTIONS[i] for i in range(len(problems))]
    tests = [[(t["input"], t["output"]) for t in item["tests"]] for item in problems]
    scores = pass_fractions(codes, tests)
    failing = [i for i, score in enumerate(scores) if score != 1.0]
    assert failing == []
