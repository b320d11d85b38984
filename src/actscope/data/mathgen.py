"""Worked mathematics examples for the default corpus, generated from a seeded RNG.

Each generator draws small random numbers, solves the problem exactly with
:class:`fractions.Fraction` and writes the solution in LaTeX-flavoured English. The text is
written for actscope (no outside source); every number in it is computed, so the worked steps
are correct. Only :mod:`random` with a fixed seed is used, so the output is identical on every
Python 3 version and machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from fractions import Fraction

Generator = Callable[[random.Random], str]


def tex(q: Fraction | int) -> str:
    """LaTeX for an exact rational: ``3``, ``-\\frac{3}{4}``."""
    q = Fraction(q)
    if q.denominator == 1:
        return str(q.numerator)
    sign = "-" if q < 0 else ""
    return f"{sign}\\frac{{{abs(q.numerator)}}}{{{q.denominator}}}"


def plain(q: Fraction | int) -> str:
    """Plain text for an exact rational: ``3``, ``-3/4``."""
    q = Fraction(q)
    return str(q.numerator) if q.denominator == 1 else f"{q.numerator}/{q.denominator}"


def poly(coeffs: list[Fraction] | list[int], var: str = "x") -> str:
    """LaTeX for sum_k coeffs[k] * var^k, highest power first (``3x^2 - x + \\frac{1}{2}``)."""
    terms: list[str] = []
    for k in range(len(coeffs) - 1, -1, -1):
        c = Fraction(coeffs[k])
        if c == 0:
            continue
        mag = abs(c)
        body = "" if (mag == 1 and k > 0) else tex(mag)
        if k == 1:
            body += var
        elif k > 1:
            body += f"{var}^{{{k}}}" if k > 9 else f"{var}^{k}"
        sign = "-" if c < 0 else "+"
        terms.append(f"{sign} {body}" if terms else (f"-{body}" if c < 0 else body))
    return " ".join(terms) if terms else "0"


def signed(q: Fraction | int) -> str:
    """``+ 3`` or ``- 3`` (LaTeX) for use after another term."""
    q = Fraction(q)
    return f"- {tex(-q)}" if q < 0 else f"+ {tex(q)}"


def paren(q: Fraction | int) -> str:
    """A rational in LaTeX, parenthesised when negative."""
    return f"({tex(q)})" if Fraction(q) < 0 else tex(q)


def lin(a: int, b: int) -> str:
    """LaTeX for ``a x + b y`` with non-zero integer coefficients (``x - 3y``)."""
    first = "x" if a == 1 else ("-x" if a == -1 else f"{a}x")
    mag = "" if abs(b) == 1 else str(abs(b))
    return f"{first} {'-' if b < 0 else '+'} {mag}y"


def nonzero(rng: random.Random, lo: int, hi: int) -> int:
    """A uniform integer in [lo, hi] other than 0."""
    while True:
        v = rng.randint(lo, hi)
        if v:
            return v


def linear_equation(rng: random.Random) -> str:
    a, c = nonzero(rng, -9, 12), nonzero(rng, -9, 9)
    while a == c:
        c = nonzero(rng, -9, 9)
    b, d = rng.randint(-30, 30), rng.randint(-30, 30)
    x = Fraction(d - b, a - c)
    verb = rng.choice(["Solve", "Find $x$ such that", "Determine the real number $x$ with"])
    return (
        f"{verb} ${poly([b, a])} = {poly([d, c])}$.\n\n"
        f"Collect the $x$ terms on the left and the constants on the right:\n"
        f"$$({a} {signed(-c)})x = {d} {signed(-b)}, \\qquad {a - c}x = {d - b}.$$\n"
        f"Dividing by ${a - c}$ gives $x = {tex(x)}$.\n"
        f"Check: the left side is ${a}\\cdot {paren(x)} {signed(b)} = {tex(a * x + b)}$ and the "
        f"right side is ${c}\\cdot {paren(x)} {signed(d)} = {tex(c * x + d)}$."
    )


def _sqrt_parts(n: int) -> tuple[int, int]:
    """Write n = s^2 * t with t square-free; return (s, t)."""
    s, t, f = 1, n, 2
    while f * f <= t:
        while t % (f * f) == 0:
            s, t = s * f, t // (f * f)
        f += 1
    return s, t


def quadratic(rng: random.Random) -> str:
    if rng.random() < 0.6:
        k, r1, r2 = rng.choice([1, 1, 2, 3]), rng.randint(-9, 9), rng.randint(-9, 9)
        a, b, c = k, -k * (r1 + r2), k * r1 * r2
    else:
        a, b, c = rng.choice([1, 1, 2]), rng.randint(-9, 9), rng.randint(-12, 6)
    disc = b * b - 4 * a * c
    head = f"Solve the quadratic equation ${poly([c, b, a])} = 0$.\n\n"
    step = (
        f"Here $a = {a}$, $b = {b}$, $c = {c}$, so the discriminant is "
        f"$\\Delta = b^2 - 4ac = {b * b} {signed(-4 * a * c)} = {disc}$.\n"
    )
    if disc < 0:
        s, t = _sqrt_parts(-disc)
        root = f"{s if s > 1 else ''}\\sqrt{{{t}}}" if t > 1 else str(s)
        return (
            head + step + f"Since $\\Delta < 0$ there is no real solution; the complex roots are "
            f"$x = \\frac{{{-b} \\pm {root}\\,i}}{{{2 * a}}}$."
        )
    s, t = _sqrt_parts(disc)
    if t == 1:
        x1, x2 = Fraction(-b + s, 2 * a), Fraction(-b - s, 2 * a)
        if x1 == x2:
            return head + step + f"The discriminant is zero: one double root $x = {tex(x1)}$."
        fac = f"{a if a != 1 else ''}(x {signed(-x1)})(x {signed(-x2)})"
        return (
            head
            + step
            + f"$\\sqrt{{\\Delta}} = {s}$, so $x = \\frac{{{-b} \\pm {s}}}{{{2 * a}}}$, that is "
            f"$x_1 = {tex(x1)}$ and $x_2 = {tex(x2)}$.\n"
            f"Equivalently ${poly([c, b, a])} = {fac}$. Vieta's formulas agree: "
            f"$x_1 + x_2 = {tex(x1 + x2)} = -b/a$ and $x_1 x_2 = {tex(x1 * x2)} = c/a$."
        )
    root = f"{s if s > 1 else ''}\\sqrt{{{t}}}"
    approx1 = (-b + math.sqrt(disc)) / (2 * a)
    approx2 = (-b - math.sqrt(disc)) / (2 * a)
    return (
        head
        + step
        + f"The discriminant is positive but not a perfect square, so the roots are irrational:\n"
        f"$$x = \\frac{{{-b} \\pm {root}}}{{{2 * a}}} \\approx {approx1:.4f} \\text{{ or }} "
        f"{approx2:.4f}.$$"
    )


def linear_system(rng: random.Random) -> str:
    x, y = rng.randint(-8, 8), rng.randint(-8, 8)
    while True:
        a, b, c, d = (nonzero(rng, -7, 7) for _ in range(4))
        det = a * d - b * c
        if det:
            break
    e, f = a * x + b * y, c * x + d * y
    dx, dy = e * d - b * f, a * f - e * c
    return (
        "Solve the system\n"
        f"\\begin{{align*}}\n{lin(a, b)} &= {e},\\\\\n{lin(c, d)} &= {f}.\n\\end{{align*}}\n"
        f"By Cramer's rule, the determinant of the coefficient matrix is "
        f"$D = ({a})({d}) - ({b})({c}) = {det}$. Replacing the first column by the right-hand "
        f"side gives $D_x = ({e})({d}) - ({b})({f}) = {dx}$, and the second column gives "
        f"$D_y = ({a})({f}) - ({e})({c}) = {dy}$.\n"
        f"Therefore $x = D_x / D = {tex(Fraction(dx, det))}$ and "
        f"$y = D_y / D = {tex(Fraction(dy, det))}$. Substituting back: "
        f"$({a})({x}) + ({b})({y}) = {e}$ and $({c})({x}) + ({d})({y}) = {f}$."
    )


def euclid(rng: random.Random) -> str:
    g = rng.choice([1, 2, 3, 4, 6, 7, 9, 12, 14, 15, 18, 21])
    a, b = g * rng.randint(20, 300), g * rng.randint(5, 150)
    a, b = max(a, b), min(a, b)
    if a == b:
        b = max(1, b - g)
    lines, r0, r1 = [], a, b
    while r1:
        q, r = divmod(r0, r1)
        lines.append(f"{r0} &= {q} \\cdot {r1} + {r}")
        r0, r1 = r1, r
    gcd = r0
    s0, s1, t0, t1, u0, u1 = 1, 0, 0, 1, a, b
    while u1:
        q = u0 // u1
        u0, u1 = u1, u0 - q * u1
        s0, s1 = s1, s0 - q * s1
        t0, t1 = t1, t0 - q * t1
    return (
        f"Compute $\\gcd({a}, {b})$ with Euclid's algorithm and express it as a combination "
        f"of ${a}$ and ${b}$.\n\\begin{{align*}}\n" + ",\\\\\n".join(lines) + ".\n\\end{align*}\n"
        f"The last non-zero remainder is $\\gcd({a}, {b}) = {gcd}$. Running the extended "
        f"algorithm gives $s = {s0}$, $t = {t0}$ with ${a} \\cdot {paren(s0)} + {b} \\cdot {paren(t0)}"
        f" = {a * s0 + b * t0}$. It follows that "
        f"$\\operatorname{{lcm}}({a}, {b}) = \\frac{{{a}\\cdot {b}}}{{{gcd}}} = {a * b // gcd}$."
    )


def _factor(n: int) -> list[tuple[int, int]]:
    out, p = [], 2
    while p * p <= n:
        e = 0
        while n % p == 0:
            n, e = n // p, e + 1
        if e:
            out.append((p, e))
        p += 1
    if n > 1:
        out.append((n, 1))
    return out


def divisors(rng: random.Random) -> str:
    n = 1
    for p in rng.sample([2, 3, 5, 7, 11, 13], rng.randint(2, 4)):
        n *= p ** rng.randint(1, 3 if p < 7 else 1)
    fac = _factor(n)
    steps, m = [], n
    for p, e in fac:
        for _ in range(e):
            steps.append(f"{m} = {p} \\cdot {m // p}")
            m //= p
    form = " \\cdot ".join(f"{p}^{{{e}}}" if e > 1 else str(p) for p, e in fac)
    tau = math.prod(e + 1 for _, e in fac)
    sigma = math.prod((p ** (e + 1) - 1) // (p - 1) for p, e in fac)
    tau_str = " \\cdot ".join(f"({e}+1)" for _, e in fac)
    return (
        f"Find the prime factorisation of ${n}$, the number of its divisors and their sum.\n\n"
        f"Dividing repeatedly by the smallest prime factor: ${', '.join(steps)}$. Hence "
        f"$${n} = {form}.$$\n"
        f"A divisor chooses each exponent independently, so "
        f"$\\tau({n}) = {tau_str} = {tau}$. The divisor sum is multiplicative: "
        f"$\\sigma({n}) = \\prod_p \\frac{{p^{{e+1}} - 1}}{{p - 1}} = {sigma}$"
        + (
            f", so ${n}$ is abundant (since ${sigma} > 2 \\cdot {n}$)."
            if sigma > 2 * n
            else f", so ${n}$ is not abundant (since ${sigma} \\le 2\\cdot {n}$)."
        )
    )


def modpow(rng: random.Random) -> str:
    m = rng.choice([7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 97, 101, 1000])
    a, k = rng.randint(2, min(30, m - 1)), rng.randint(20, 300)
    bits = bin(k)[2:]
    powers, sq = [], a % m
    for i in range(len(bits)):
        powers.append(f"{a}^{{{2**i}}} &\\equiv {sq}")
        sq = sq * sq % m
    used = [2**i for i, bit in enumerate(reversed(bits)) if bit == "1"]
    return (
        f"Compute ${a}^{{{k}}} \\bmod {m}$ by repeated squaring.\n\n"
        f"In binary, ${k} = {bits}_2 = {' + '.join(map(str, reversed(used)))}$. "
        f"Squaring modulo ${m}$:\n\\begin{{align*}}\n"
        + " \\\\\n".join(powers)
        + "\n\\end{align*}\n"
        f"(all congruences modulo ${m}$). Multiplying the powers selected by the binary digits, "
        f"${a}^{{{k}}} \\equiv {pow(a, k, m)} \\pmod{{{m}}}$."
    )


def derivative(rng: random.Random) -> str:
    deg = rng.randint(2, 5)
    coeffs = [rng.randint(-9, 9) for _ in range(deg)] + [nonzero(rng, -6, 6)]
    d = [k * coeffs[k] for k in range(1, len(coeffs))]
    x0 = rng.randint(-3, 3)
    f0 = sum(c * x0**k for k, c in enumerate(coeffs))
    s0 = sum(c * x0**k for k, c in enumerate(d))
    return (
        f"Let $f(x) = {poly(coeffs)}$. Find $f'(x)$ and the tangent line at $x = {x0}$.\n\n"
        f"Differentiating term by term with $\\frac{{d}}{{dx}} x^n = n x^{{n-1}}$:\n"
        f"$$f'(x) = {poly(d)}.$$\n"
        f"At $x_0 = {x0}$: $f({x0}) = {f0}$ and $f'({x0}) = {s0}$. The tangent line is "
        f"$y = f(x_0) + f'(x_0)(x - x_0)$, that is $y = {poly([f0 - s0 * x0, s0])}$."
    )


def integral(rng: random.Random) -> str:
    deg = rng.randint(1, 3)
    coeffs = [rng.randint(-6, 6) for _ in range(deg)] + [nonzero(rng, -5, 5)]
    anti = [Fraction(0)] + [Fraction(c, k + 1) for k, c in enumerate(coeffs)]
    lo = rng.randint(-3, 1)
    hi = lo + rng.randint(1, 4)

    def big_f(x: int) -> Fraction:
        return sum((c * x**k for k, c in enumerate(anti)), Fraction(0))

    val = big_f(hi) - big_f(lo)
    approx = f" \\approx {float(val):.4f}" if val.denominator != 1 else ""
    return (
        f"Evaluate $\\displaystyle\\int_{{{lo}}}^{{{hi}}} ({poly(coeffs)})\\,dx$.\n\n"
        f"An antiderivative is $F(x) = {poly(anti)}$. By the fundamental theorem of calculus "
        f"the integral equals $F({hi}) - F({lo}) = {tex(big_f(hi))} - {paren(big_f(lo))} = "
        f"{tex(val)}{approx}$."
    )


def series(rng: random.Random) -> str:
    if rng.random() < 0.5:
        a, d, n = rng.randint(-10, 20), nonzero(rng, -5, 9), rng.randint(8, 60)
        last = a + (n - 1) * d
        return (
            f"Find the sum of the arithmetic progression with first term ${a}$, common "
            f"difference ${d}$ and ${n}$ terms.\n\n"
            f"The last term is $a_{{{n}}} = {a} + ({n} - 1)\\cdot {paren(d)} = {last}$. Pairing "
            f"first and last terms, $S_{{{n}}} = \\frac{{n(a_1 + a_n)}}{{2}} = "
            f"\\frac{{{n}\\,({a} {signed(last)})}}{{2}} = {tex(Fraction(n * (a + last), 2))}$."
        )
    a = nonzero(rng, -5, 9)
    r = Fraction(nonzero(rng, -4, 4), rng.choice([2, 3, 5, 7]))
    while r in (0, 1, -1):
        r = Fraction(nonzero(rng, -4, 4), rng.choice([2, 3, 5]))
    n = rng.randint(4, 9)
    s = a * (1 - r**n) / (1 - r)
    text = (
        f"Sum the first ${n}$ terms of the geometric sequence with $a = {a}$ and ratio "
        f"$r = {tex(r)}$.\n\n"
        f"Using $S_n = a\\,\\frac{{1 - r^n}}{{1 - r}}$: $r^{{{n}}} = {tex(r**n)}$, so "
        f"$S_{{{n}}} = {a}\\cdot\\frac{{1 {signed(-(r**n))}}}{{1 {signed(-r)}}} = {tex(s)}$."
    )
    if abs(r) < 1:
        text += (
            f" Since $|r| < 1$ the infinite series converges to "
            f"$\\frac{{a}}{{1 - r}} = {tex(a / (1 - r))}$."
        )
    else:
        text += " Since $|r| > 1$ the infinite series diverges."
    return text


def matrices(rng: random.Random) -> str:
    a = [[rng.randint(-5, 6) for _ in range(2)] for _ in range(2)]
    b = [[rng.randint(-5, 6) for _ in range(2)] for _ in range(2)]
    p = [[sum(a[i][k] * b[k][j] for k in range(2)) for j in range(2)] for i in range(2)]

    def m2(m: list[list[int]] | list[list[Fraction]]) -> str:
        return (
            "\\begin{pmatrix} "
            + " \\\\ ".join(" & ".join(tex(v) for v in r) for r in m)
            + (" \\end{pmatrix}")
        )

    det = a[0][0] * a[1][1] - a[0][1] * a[1][0]
    text = (
        f"Let $A = {m2(a)}$ and $B = {m2(b)}$. Compute $AB$, $\\det A$ and, if it exists, "
        f"$A^{{-1}}$.\n\n"
        f"Each entry of the product is a row of $A$ times a column of $B$; for example "
        f"$(AB)_{{11}} = ({a[0][0]})({b[0][0]}) + ({a[0][1]})({b[1][0]}) = {p[0][0]}$. "
        f"Altogether $AB = {m2(p)}$.\n"
        f"$\\det A = ({a[0][0]})({a[1][1]}) - ({a[0][1]})({a[1][0]}) = {det}$. "
    )
    if det == 0:
        return text + "The determinant is zero, so $A$ is singular and has no inverse."
    inv = [
        [Fraction(a[1][1], det), Fraction(-a[0][1], det)],
        [Fraction(-a[1][0], det), Fraction(a[0][0], det)],
    ]
    return text + (
        f"Since it is non-zero, $A^{{-1}} = \\frac{{1}}{{\\det A}}"
        f"\\begin{{pmatrix}} d & -b \\\\ -c & a \\end{{pmatrix}} = {m2(inv)}$, "
        f"and one checks that $A A^{{-1}} = I$. Also $\\det(AB) = \\det A \\det B = "
        f"{det} \\cdot {paren(b[0][0] * b[1][1] - b[0][1] * b[1][0])} = "
        f"{p[0][0] * p[1][1] - p[0][1] * p[1][0]}$."
    )


def determinant3(rng: random.Random) -> str:
    m = [[rng.randint(-4, 5) for _ in range(3)] for _ in range(3)]

    def minor(j: int) -> int:
        cols = [c for c in range(3) if c != j]
        return m[1][cols[0]] * m[2][cols[1]] - m[1][cols[1]] * m[2][cols[0]]

    minors = [minor(j) for j in range(3)]
    det = m[0][0] * minors[0] - m[0][1] * minors[1] + m[0][2] * minors[2]
    rows = " \\\\ ".join(" & ".join(str(v) for v in r) for r in m)
    return (
        f"Compute the determinant of $M = \\begin{{pmatrix}} {rows} \\end{{pmatrix}}$ by "
        f"cofactor expansion along the first row.\n\n"
        f"The three $2\\times 2$ minors are ${minors[0]}$, ${minors[1]}$ and ${minors[2]}$, so\n"
        f"$$\\det M = {m[0][0]} \\cdot {paren(minors[0])} - {paren(m[0][1])} \\cdot "
        f"{paren(minors[1])} + {paren(m[0][2])} \\cdot {paren(minors[2])} = {det}.$$\n"
        + (
            "The matrix is singular: its rows are linearly dependent."
            if det == 0
            else f"Since $\\det M = {det} \\neq 0$, the columns of $M$ form a basis of "
            f"$\\mathbb{{R}}^3$ and $Mx = b$ has a unique solution for every $b$."
        )
    )


def binomial(rng: random.Random) -> str:
    n, p, q = rng.randint(3, 7), nonzero(rng, -3, 4), nonzero(rng, -4, 5)
    coeffs = [math.comb(n, k) * p**k * q ** (n - k) for k in range(n + 1)]
    k = rng.randint(1, n - 1)
    return (
        f"Expand $({poly([q, p])})^{n}$.\n\n"
        f"By the binomial theorem the coefficient of $x^k$ is $\\binom{{{n}}}{{k}}\\,{paren(p)}^k"
        f"\\,{paren(q)}^{{{n}-k}}$. The binomial coefficients are "
        f"${', '.join(str(math.comb(n, j)) for j in range(n + 1))}$, which gives\n"
        f"$$({poly([q, p])})^{n} = {poly(coeffs)}.$$\n"
        f"For instance the coefficient of $x^{k}$ is $\\binom{{{n}}}{{{k}}}\\cdot {paren(p)}^{k}"
        f"\\cdot {paren(q)}^{{{n - k}}} = {math.comb(n, k)} \\cdot {p**k} \\cdot {paren(q ** (n - k))}"
        f" = {coeffs[k]}$. Setting $x = 1$ checks the sum of coefficients: "
        f"${sum(coeffs)} = ({p + q})^{n}$."
    )


def statistics(rng: random.Random) -> str:
    data = sorted(rng.randint(1, 40) for _ in range(rng.randint(5, 9)))
    n = len(data)
    mean = Fraction(sum(data), n)
    ss = sum((Fraction(x) - mean) ** 2 for x in data)
    med = Fraction(data[n // 2]) if n % 2 else Fraction(data[n // 2 - 1] + data[n // 2], 2)
    return (
        f"For the data ${', '.join(map(str, data))}$ find the mean, the median, and the "
        f"population and sample variances.\n\n"
        f"There are $n = {n}$ values with sum ${sum(data)}$, so "
        f"$\\bar x = \\frac{{{sum(data)}}}{{{n}}}"
        + (f" = {tex(mean)}" if mean.denominator != n else "")
        + (f" \\approx {float(mean):.3f}$. " if mean.denominator != 1 else "$. ")
        + f"The median is ${tex(med)}$. The sum of squared deviations is "
        f"$\\sum (x_i - \\bar x)^2 = {tex(ss)}$, hence the population variance is "
        f"$\\sigma^2 = {tex(ss / n)} \\approx {float(ss / n):.3f}$ and the sample variance is "
        f"$s^2 = \\frac{{1}}{{n-1}}\\sum (x_i - \\bar x)^2 = {tex(ss / (n - 1))}$, so "
        f"$s \\approx {math.sqrt(ss / (n - 1)):.3f}$."
    )


def fractions(rng: random.Random) -> str:
    fs = [Fraction(nonzero(rng, -9, 11), rng.randint(2, 12)) for _ in range(3)]
    den = math.lcm(*(f.denominator for f in fs))
    nums = [f.numerator * (den // f.denominator) for f in fs]
    total = sum(fs, Fraction(0))
    prod = fs[0] * fs[1]
    pn, pd = fs[0].numerator * fs[1].numerator, fs[0].denominator * fs[1].denominator
    reduced = "after cancelling common factors" if math.gcd(pn, pd) > 1 else "in lowest terms"
    return (
        f"Compute ${tex(fs[0])} {signed(fs[1])} {signed(fs[2])}$ and "
        f"${paren(fs[0])} \\times {paren(fs[1])}$ in lowest terms.\n\n"
        f"The least common denominator is ${den}$, so the sum is "
        f"$\\frac{{{nums[0]} {'+' if nums[1] >= 0 else '-'} {abs(nums[1])} "
        f"{'+' if nums[2] >= 0 else '-'} {abs(nums[2])}}}{{{den}}} = {tex(total)}$. "
        f"For the product multiply numerators and denominators: "
        f"$\\frac{{{pn}}}{{{pd}}} = {tex(prod)}$, {reduced}."
    )


def dice(rng: random.Random) -> str:
    if rng.random() < 0.5:
        s = rng.randint(2, 12)
        ways = [(i, s - i) for i in range(1, 7) if 1 <= s - i <= 6]
        return (
            f"Two fair dice are rolled. What is the probability that the total is ${s}$?\n\n"
            f"There are $36$ equally likely ordered outcomes. The favourable ones are "
            f"${', '.join(f'({i},{j})' for i, j in ways)}$, so "
            f"$P = \\frac{{{len(ways)}}}{{36}}"
            + (f" = {tex(Fraction(len(ways), 36))}$." if math.gcd(len(ways), 36) > 1 else "$.")
        )
    red, blue = rng.randint(2, 9), rng.randint(2, 9)
    n = red + blue
    p2 = Fraction(red, n) * Fraction(red - 1, n - 1)
    p_mixed = 2 * Fraction(red, n) * Fraction(blue, n - 1)
    return (
        f"A bag holds ${red}$ red and ${blue}$ blue balls. Two are drawn without replacement. "
        f"Find the probability that both are red, and that the colours differ.\n\n"
        f"$P(\\text{{both red}}) = \\frac{{{red}}}{{{n}}}\\cdot\\frac{{{red - 1}}}{{{n - 1}}} = "
        f"{tex(p2)}$, which agrees with $\\binom{{{red}}}{{2}} / \\binom{{{n}}}{{2}} = "
        f"{math.comb(red, 2)}/{math.comb(n, 2)}$. The colours differ with probability "
        f"$2\\cdot\\frac{{{red}}}{{{n}}}\\cdot\\frac{{{blue}}}{{{n - 1}}} = {tex(p_mixed)}$."
    )


def complex_numbers(rng: random.Random) -> str:
    a, b, c, d = (nonzero(rng, -7, 7) for _ in range(4))
    re, im = a * c - b * d, a * d + b * c
    den = c * c + d * d
    qre, qim = Fraction(a * c + b * d, den), Fraction(b * c - a * d, den)

    def cx(x: Fraction | int, y: Fraction | int) -> str:
        y = Fraction(y)
        mag = "" if abs(y) == 1 else tex(abs(y))
        return f"{tex(x)} {'-' if y < 0 else '+'} {mag}i"

    return (
        f"Let $z = {cx(a, b)}$ and $w = {cx(c, d)}$. Compute $zw$, $z/w$ and $|z|$.\n\n"
        f"Using $i^2 = -1$: $zw = ({a})({c}) - ({b})({d}) + [({a})({d}) + ({b})({c})]i = "
        f"{cx(re, im)}$.\n"
        f"To divide, multiply by the conjugate $\\bar w = {cx(c, -d)}$: "
        f"$\\frac{{z}}{{w}} = \\frac{{z\\bar w}}{{|w|^2}} = \\frac{{{cx(a * c + b * d, b * c - a * d)}}}"
        f"{{{den}}} = {cx(qre, qim)}$.\n"
        f"$|z| = \\sqrt{{{paren(a)}^2 + {paren(b)}^2}} = \\sqrt{{{a * a + b * b}}} \\approx "
        f"{math.sqrt(a * a + b * b):.4f}$, and $|zw| = |z||w| = \\sqrt{{{(a * a + b * b) * den}}}$."
    )


def percent(rng: random.Random) -> str:
    price = rng.randint(20, 500)
    up, down = rng.choice([5, 10, 12, 15, 20, 25, 30]), rng.choice([5, 10, 15, 20, 25, 40])
    after = Fraction(price) * (100 + up) / 100 * (100 - down) / 100
    change = (after - price) / price * 100
    rate, years, principal = (
        rng.choice([2, 3, 4, 5, 6]),
        rng.randint(2, 6),
        rng.randint(1, 9) * 1000,
    )
    final = principal * (1 + rate / 100) ** years
    return (
        f"A price of {price} units is raised by {up}% and later lowered by {down}%. What is the "
        f"final price, and what is the overall percentage change?\n\n"
        f"Percentage changes multiply: {price} x {1 + up / 100:g} x {1 - down / 100:g} = "
        f"{float(after):.2f}. The overall factor is {float(after / price):.4f}, a change of "
        f"{float(change):+.2f}%, not {up - down:+d}% as adding the percentages would suggest.\n\n"
        f"Similarly, {principal} invested at {rate}% compound interest for {years} years grows to "
        f"{principal} x {1 + rate / 100:g}^{years} = {final:.2f}, compared with "
        f"{principal * (1 + rate * years / 100):.2f} under simple interest."
    )


def long_multiplication(rng: random.Random) -> str:
    a, b = rng.randint(100, 9999), rng.randint(12, 999)
    digits = str(b)[::-1]
    parts = [a * int(dig) * 10**i for i, dig in enumerate(digits)]
    lines = "\n".join(
        f"  {a} x {dig}{'0' * i} = {p}"
        for i, (dig, p) in enumerate(zip(digits, parts, strict=True))
    )
    m = rng.randint(7, 97)
    q, r = divmod(a * b, m)
    return (
        f"Multiply {a} by {b} by hand.\n\n"
        f"Split the second factor into its digits and add the partial products:\n{lines}\n"
        f"Sum: {' + '.join(map(str, parts))} = {a * b}.\n"
        f"Check by casting out nines: {a} leaves remainder {a % 9} and {b} leaves {b % 9} on "
        f"division by 9; their product {a % 9} x {b % 9} leaves {(a % 9) * (b % 9) % 9}, and so "
        f"does {a * b}.\n"
        f"Dividing the product by {m}: {a * b} = {m} x {q} + {r}, so the quotient is {q} and the "
        f"remainder is {r}. The remainder can be found without the full division: "
        f"({a % m} x {b % m}) mod {m} = {(a % m) * (b % m) % m}."
    )


def limits(rng: random.Random) -> str:
    a, b, c = nonzero(rng, -6, 7), rng.randint(-9, 9), rng.randint(-9, 9)
    d, e, f = nonzero(rng, -6, 7), rng.randint(-9, 9), rng.randint(-9, 9)
    r = rng.randint(-5, 5)
    k = nonzero(rng, -4, 4)
    return (
        f"Find $\\displaystyle\\lim_{{x\\to\\infty}} \\frac{{{poly([c, b, a])}}}"
        f"{{{poly([f, e, d])}}}$ and $\\displaystyle\\lim_{{x \\to {r}}} "
        f"\\frac{{x^2 {signed(-r * r)}}}{{x {signed(-r)}}}$.\n\n"
        f"For the first limit divide numerator and denominator by $x^2$: the terms "
        f"$\\frac{{{b}}}{{x}}$, $\\frac{{{c}}}{{x^2}}$, $\\frac{{{e}}}{{x}}$ and "
        f"$\\frac{{{f}}}{{x^2}}$ tend to $0$, leaving the ratio of leading coefficients "
        f"$\\frac{{{a}}}{{{d}}} = {tex(Fraction(a, d))}$.\n"
        f"For the second, $x^2 {signed(-r * r)} = (x {signed(-r)})(x {signed(r)})$, so for "
        f"$x \\neq {r}$ the quotient equals $x {signed(r)}$, whose limit is ${2 * r}$. "
        f"Likewise $\\lim_{{x\\to 0}} \\frac{{\\sin({k}x)}}{{x}} = {k}$, since "
        f"$\\frac{{\\sin({k}x)}}{{x}} = {k}\\cdot\\frac{{\\sin({k}x)}}{{{k}x}}$ and "
        f"$\\frac{{\\sin u}}{{u}} \\to 1$."
    )


def logarithms(rng: random.Random) -> str:
    base = rng.choice([2, 3, 5, 10])
    m, n = rng.randint(1, 6), rng.randint(1, 6)
    e = Fraction(rng.randint(1, 5), rng.choice([1, 2, 3]))
    return (
        f"Simplify $\\log_{{{base}}}({base**m} \\cdot {base**n})$ and solve "
        f"${base}^{{x}} = {base**n}^{{{tex(e)}}}$ for $x$.\n\n"
        f"Using $\\log_b(uv) = \\log_b u + \\log_b v$ and $\\log_b b^k = k$: "
        f"$\\log_{{{base}}} {base**m} + \\log_{{{base}}} {base**n} = {m} + {n} = {m + n}$.\n"
        f"For the equation, write the right side as a power of ${base}$: "
        f"$({base}^{{{n}}})^{{{tex(e)}}} = {base}^{{{tex(n * e)}}}$, so $x = {tex(n * e)}$. "
        f"In general $\\log_b a = \\frac{{\\ln a}}{{\\ln b}}$, e.g. "
        f"$\\log_{{{base}}} {base**m + 1} \\approx {math.log(base**m + 1, base):.5f}$."
    )


GENERATORS: dict[str, Generator] = {
    "linear-equations": linear_equation,
    "quadratics": quadratic,
    "linear-systems": linear_system,
    "euclid": euclid,
    "divisors": divisors,
    "modular-powers": modpow,
    "derivatives": derivative,
    "integrals": integral,
    "series": series,
    "matrices": matrices,
    "determinants": determinant3,
    "binomial": binomial,
    "statistics": statistics,
    "fractions": fractions,
    "probability": dice,
    "complex-numbers": complex_numbers,
    "percentages": percent,
    "arithmetic": long_multiplication,
    "limits": limits,
    "logarithms": logarithms,
}

_TITLES = ("Worked examples", "Exercises with solutions", "Practice problems", "Solved problems")


def worked_documents(seed: int, n_chars: int, max_chars: int = 2000) -> list[tuple[str, str, str]]:
    """Generate ``(family, index, text)`` documents totalling at least ``n_chars`` characters.

    Families are visited round-robin; each document holds one to five problems of one family,
    kept under ``max_chars`` characters where a single problem allows.
    """
    rng = random.Random(seed)
    docs: list[tuple[str, str, str]] = []
    counts = dict.fromkeys(GENERATORS, 0)
    total = 0
    while total < n_chars:
        for family, gen in GENERATORS.items():
            target = rng.randint(700, 1700)
            head = f"{rng.choice(_TITLES)}: {family.replace('-', ' ')}\n\n"
            parts: list[str] = []
            length = len(head)
            while length < target and len(parts) < 5:
                block = f"Example {len(parts) + 1}. {gen(rng)}\n\n"
                if parts and length + len(block) > max_chars:
                    break
                parts.append(block)
                length += len(block)
            text = (head + "".join(parts)).strip()
            docs.append((family, str(counts[family]), text))
            counts[family] += 1
            total += len(text)
    return docs
