"""Convolution-kernel specifications in fitsh/ficonv syntax, and their basis.

A specification is a ``;``-separated list of terms, each followed by ``/N``,
the order of the 2-D polynomial (in normalised x, y) that multiplies it:

``i/N``
    identity (the flux term): a delta function at the kernel centre.
``d=H/N``
    discrete delta-function kernel of half-size H: one basis per pixel of the
    (2H+1)^2 box except the centre, each written as ``delta(m, n) - delta(0, 0)``
    so that it carries no flux and the flux scale is the ``i`` term alone.
``g=H,sigma,O/N``
    Gauss-Hermite bases of half-size H: ``exp(-r^2 / 2 sigma^2) x^a y^b`` with
    ``a + b <= O``; even ones are normalised to unit sum and the central delta
    is subtracted (again, no flux); odd ones have zero sum already.
``b/N``
    background, a polynomial of order N added to the convolved reference.

The default ``b/4;i/4;d=4/4`` is pipe-trex's.  ``d`` and ``g`` terms carry no
flux, so a spec that has them needs an ``i`` term.

>>> spec = parse_kernel("b/4;i/4;d=4/4")
>>> basis = spec.basis()
>>> basis.images.shape, basis.nunknowns
((81, 9, 9), 1230)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

DEFAULT_KERNEL = "b/4;i/4;d=4/4"

_TERM = re.compile(r"^(?P<kind>[bidg])(?:=(?P<args>[^/]*))?/(?P<order>[^/]*)$")


@dataclass(frozen=True)
class Term:
    """One term of a kernel specification (see the module docstring)."""

    kind: str
    order: int
    halfsize: int = 0
    sigma: float = 0.0
    hermite: int = 0


@dataclass(frozen=True)
class Basis:
    """Kernel basis of a specification.

    Attributes
    ----------
    images : float64, shape (nbasis, 2H+1, 2H+1)
        Kernel image of each basis; ``images[k, H + n, H + m]`` multiplies
        ``R[y - n, x - m]`` (ordinary convolution).  Basis 0 is the identity.
    orders : int, shape (nbasis,)
        Polynomial order of each basis coefficient.
    background_order : int
        Order of the background polynomial, -1 when there is none.
    """

    images: np.ndarray
    orders: np.ndarray
    background_order: int

    @property
    def halfsize(self) -> int:
        return (self.images.shape[1] - 1) // 2

    @property
    def max_order(self) -> int:
        return int(max(self.orders.max(initial=0), self.background_order))

    @property
    def nunknowns(self) -> int:
        n = sum(nterms(int(o)) for o in self.orders)
        return n + (nterms(self.background_order) if self.background_order >= 0 else 0)


@dataclass(frozen=True)
class KernelSpec:
    """A parsed kernel specification; ``text`` is its canonical form."""

    terms: tuple[Term, ...]

    @property
    def text(self) -> str:
        parts = []
        for t in self.terms:
            if t.kind == "d":
                parts.append(f"d={t.halfsize}/{t.order}")
            elif t.kind == "g":
                parts.append(f"g={t.halfsize},{t.sigma:g},{t.hermite}/{t.order}")
            else:
                parts.append(f"{t.kind}/{t.order}")
        return ";".join(parts)

    def term(self, kind: str) -> Term | None:
        return next((t for t in self.terms if t.kind == kind), None)

    @property
    def halfsize(self) -> int:
        return max((t.halfsize for t in self.terms), default=0)

    def basis(self) -> Basis:
        """The basis images and orders (identity first, then d, then g bases)."""
        h = self.halfsize
        size = 2 * h + 1
        centre = np.zeros((size, size))
        centre[h, h] = 1.0
        images, orders = [], []
        ident = self.term("i")
        if ident is not None:
            images.append(centre)
            orders.append(ident.order)
        for t in self.terms:
            if t.kind == "d":
                for n in range(-t.halfsize, t.halfsize + 1):
                    for m in range(-t.halfsize, t.halfsize + 1):
                        if m or n:
                            img = -centre.copy()
                            img[h + n, h + m] += 1.0
                            images.append(img)
                            orders.append(t.order)
            elif t.kind == "g":
                for img in _gauss_hermite(t, h):
                    images.append(img)
                    orders.append(t.order)
        bg = self.term("b")
        return Basis(
            images=np.array(images, dtype=np.float64).reshape(-1, size, size),
            orders=np.array(orders, dtype=np.int64),
            background_order=bg.order if bg is not None else -1,
        )


def _gauss_hermite(t: Term, h: int) -> list[np.ndarray]:
    size = 2 * h + 1
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1].astype(np.float64)
    inside = (np.abs(xx) <= t.halfsize) & (np.abs(yy) <= t.halfsize)
    gauss = np.exp(-(xx**2 + yy**2) / (2.0 * t.sigma**2)) * inside
    out = []
    for deg in range(t.hermite + 1):
        for b in range(deg + 1):
            a = deg - b
            img = gauss * xx**a * yy**b
            if a % 2 == 0 and b % 2 == 0:
                img = img / img.sum()
                img[h, h] -= 1.0
            out.append(img.reshape(size, size))
    return out


def nterms(order: int) -> int:
    """Number of monomials x^i y^j with i + j <= order."""
    return (order + 1) * (order + 2) // 2


def exponents(order: int) -> list[tuple[int, int]]:
    """Monomial exponents (i, j) of x^i y^j by total degree: (0,0), (1,0), (0,1), (2,0), ..."""
    return [(d - j, j) for d in range(order + 1) for j in range(d + 1)]


def poly_terms(x: np.ndarray, y: np.ndarray, order: int) -> np.ndarray:
    """Monomials of (normalised) x, y: shape (nterms(order),) + x.shape."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return np.array([x**i * y**j for i, j in exponents(order)])


def dense_coefficients(coef: np.ndarray, order: int) -> np.ndarray:
    """Term-ordered coefficients (..., nterms) as dense arrays (..., order+1, order+1) [i, j]."""
    coef = np.asarray(coef, dtype=np.float64)
    out = np.zeros(coef.shape[:-1] + (order + 1, order + 1))
    for t, (i, j) in enumerate(exponents(order)[: coef.shape[-1]]):
        out[..., i, j] = coef[..., t]
    return out


def parse_kernel(spec: str) -> KernelSpec:
    """Parse a fitsh-style kernel specification such as ``"b/4;i/4;d=4/4"``.

    Raises
    ------
    ValueError
        With a message naming the offending term.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("empty kernel specification")
    terms = []
    for raw in spec.split(";"):
        text = raw.strip().replace(" ", "")
        if not text:
            continue
        terms.append(_parse_term(text))
    kinds = [t.kind for t in terms]
    for kind in "bid":
        if kinds.count(kind) > 1:
            raise ValueError(f"kernel term {kind!r} given more than once in {spec!r}")
    if not terms:
        raise ValueError("empty kernel specification")
    if ("d" in kinds or "g" in kinds) and "i" not in kinds:
        raise ValueError(f"d= and g= terms carry no flux: {spec!r} needs an i/N term")
    if kinds == ["b"]:
        raise ValueError(f"kernel specification {spec!r} has no kernel term (i, d or g)")
    return KernelSpec(terms=tuple(terms))


def _parse_term(text: str) -> Term:
    match = _TERM.match(text)
    if match is None:
        raise ValueError(f"bad kernel term {text!r}: expected i/N, b/N, d=H/N or g=H,sigma,O/N")
    kind, args = match["kind"], match["args"]
    order = _int(match["order"], "polynomial order", text)
    if order < 0:
        raise ValueError(f"bad kernel term {text!r}: negative polynomial order")
    if kind in "bi":
        if args is not None:
            raise ValueError(f"bad kernel term {text!r}: {kind}/N takes no parameters")
        return Term(kind, order)
    if args is None:
        raise ValueError(f"bad kernel term {text!r}: {kind}= needs parameters")
    if kind == "d":
        halfsize = _int(args, "half-size", text)
        if halfsize < 1:
            raise ValueError(f"bad kernel term {text!r}: half-size must be >= 1")
        return Term(kind, order, halfsize=halfsize)
    parts = args.split(",")
    if len(parts) != 3:
        raise ValueError(f"bad kernel term {text!r}: g= needs H,sigma,O")
    halfsize = _int(parts[0], "half-size", text)
    hermite = _int(parts[2], "Hermite order", text)
    try:
        sigma = float(parts[1])
    except ValueError:
        raise ValueError(f"bad kernel term {text!r}: sigma {parts[1]!r} is not a number") from None
    if halfsize < 1 or not sigma > 0 or hermite < 0:
        raise ValueError(f"bad kernel term {text!r}: need H >= 1, sigma > 0, O >= 0")
    return Term(kind, order, halfsize=halfsize, sigma=sigma, hermite=hermite)


def _int(text: str, what: str, term: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"bad kernel term {term!r}: {what} {text!r} is not an integer") from None
