//! Tests of the whole-batch GEMM convolutions ([`super::conv`]) over random geometries:
//! against the composed dfdx path (values and gradients), against central finite
//! differences of a scalar loss (f64), conv2d against its adjoint (the transposed conv),
//! the chunked path against the unchunked one, the input-gradient-only backward against
//! the full one, and bit-identical results on 1 and 4 threads; each in both column
//! layouts (plain, and split by padding: [`super::slots`]).

use dfdx::prelude::*;

use super::cols::CHUNK_MAX_TEST;
use super::conv;
use super::gemm::{kept_now, GemmFloat, Kept, KEEP_MAX};
use super::ops::{self, IdxCache, ParamGrads, ParamGrads::Computed};
use super::slots::SPLIT_TEST;
use super::{Rng, T1, T4};

type F = f64;

/// One convolution: `conv2d` of `x (b, cin, h, w)` to `cout` channels, or (transposed)
/// `conv_transpose2d` of `x (b, cin, h, w)` to `cout` channels.
#[derive(Clone, Copy, Debug)]
struct Case {
    b: usize,
    cin: usize,
    cout: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
    bias: bool,
    transposed: bool,
}

impl Case {
    fn x_shape(&self) -> (usize, usize, usize, usize) {
        (self.b, self.cin, self.h, self.w)
    }
    fn w_shape(&self) -> (usize, usize, usize, usize) {
        if self.transposed {
            (self.cin, self.cout / self.groups, self.k, self.k)
        } else {
            (self.cout, self.cin / self.groups, self.k, self.k)
        }
    }
    fn sizes(&self) -> [usize; 3] {
        let (a, b, c, d) = self.x_shape();
        let (e, f, g, h) = self.w_shape();
        [a * b * c * d, e * f * g * h, self.cout]
    }
    /// Random geometry: kernel 1-4, stride 1-2, padding 0-2, groups 1, 2 or depthwise,
    /// sizes 1-7 (mostly odd, non-square), batch 1-3, bias or not.
    fn random(rng: &mut Rng, transposed: bool) -> Self {
        loop {
            let (groups, cpg, opg) = match rng.below(3) {
                0 => (1, 1 + rng.below(3), 1 + rng.below(3)),
                1 => (2, 1 + rng.below(2), 1 + rng.below(2)),
                _ => {
                    let c = 2 + rng.below(3);
                    (c, 1, 1 + rng.below(2))
                }
            };
            let c = Case {
                b: 1 + rng.below(3),
                cin: cpg * groups,
                cout: opg * groups,
                h: 1 + rng.below(7),
                w: 1 + rng.below(7),
                k: 1 + rng.below(4),
                stride: 1 + rng.below(2),
                pad: rng.below(3),
                groups,
                bias: rng.below(2) == 0,
                transposed,
            };
            let ok = if transposed {
                (c.h.min(c.w) - 1) * c.stride + c.k > 2 * c.pad
            } else {
                c.h.min(c.w) + 2 * c.pad >= c.k
            };
            if ok {
                return c;
            }
        }
    }
}

/// The op under test (`fast`: the GEMM custom op, computing the parameter gradients or
/// not as `pg` says; else the composed dfdx path).
fn run<E: GemmFloat, T: Tape<E, Cpu>>(
    c: &Case,
    fast: bool,
    pg: ParamGrads,
    x: T4<E, Cpu, T>,
    w: T4<E, Cpu, T>,
    b: Option<T1<E, Cpu, T>>,
) -> T4<E, Cpu, T>
where
    Cpu: super::Dev<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let cache = IdxCache::default();
    match (c.transposed, fast) {
        (false, true) => conv::conv2d_op(x, w, b, c.stride, c.pad, c.groups, pg),
        (false, false) => ops::conv2d_composed(x, w, b, c.stride, c.pad, c.groups, &cache),
        (true, true) => conv::conv_transpose2d_op(x, w, b, c.stride, c.pad, c.groups, pg),
        (true, false) => ops::conv_transpose2d_composed(x, w, b, c.stride, c.pad, c.groups, &cache),
    }
}

/// Values, and gradients of `sum(y * r)` for a fixed random `r`, of x, w and b (those of
/// w and b allocated as zeros before the pass, so a backward that skips them leaves
/// zeros).
type Out<E> = (Vec<E>, Vec<E>, Vec<E>, Vec<E>);

fn forward_backward<E: GemmFloat>(c: &Case, fast: bool, vals: &[Vec<E>; 3]) -> Out<E>
where
    Cpu: super::Dev<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    forward_backward_pg(c, fast, Computed, vals)
}

fn forward_backward_pg<E: GemmFloat>(
    c: &Case,
    fast: bool,
    pg: ParamGrads,
    vals: &[Vec<E>; 3],
) -> Out<E>
where
    Cpu: super::Dev<E>,
    <Cpu as Storage<E>>::Vec: std::ops::DerefMut<Target = Vec<E>>,
{
    let dev = Cpu::default();
    let x: T4<E, Cpu> = dev.tensor_from_vec(vals[0].clone(), c.x_shape());
    let w: T4<E, Cpu> = dev.tensor_from_vec(vals[1].clone(), c.w_shape());
    let b: T1<E, Cpu> = dev.tensor_from_vec(vals[2].clone(), (c.cout,));
    let mut grads = Gradients::leaky();
    grads.try_alloc_for(&w).unwrap();
    grads.try_alloc_for(&b).unwrap();
    let y = run(
        c,
        fast,
        pg,
        x.clone().traced(grads),
        w.retaped::<OwnedTape<E, Cpu>>(),
        c.bias.then(|| b.retaped::<OwnedTape<E, Cpu>>()),
    );
    let yv = y.retaped::<OwnedTape<E, Cpu>>().as_vec();
    let n = yv.len();
    let r: T1<E, Cpu> = dev.tensor_from_vec(
        Rng::new(77).normals(n).into_iter().map(E::of).collect(),
        (n,),
    );
    let grads = (y.reshape_like(&(n,)) * r).sum::<(), Axis<0>>().backward();
    let gb = if c.bias {
        grads.get(&b).as_vec()
    } else {
        vec![]
    };
    (yv, grads.get(&x).as_vec(), grads.get(&w).as_vec(), gb)
}

fn random_vals(c: &Case, seed: u64) -> [Vec<F>; 3] {
    let mut rng = Rng::new(seed);
    c.sizes().map(|n| rng.normals(n))
}

fn assert_close(a: &[F], b: &[F], tol: F, what: &str, c: &Case) {
    assert_eq!(a.len(), b.len(), "{what}: lengths, {c:?}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())),
            "{what}[{i}]: {x} vs {y}, {c:?}"
        );
    }
}

/// `sum(op(x, w, b) * r)` without a tape.
fn loss(c: &Case, vals: &[Vec<F>; 3]) -> F {
    let dev = Cpu::default();
    let x: T4<F, Cpu> = dev.tensor_from_vec(vals[0].clone(), c.x_shape());
    let w: T4<F, Cpu> = dev.tensor_from_vec(vals[1].clone(), c.w_shape());
    let b: T1<F, Cpu> = dev.tensor_from_vec(vals[2].clone(), (c.cout,));
    let y = run(c, true, Computed, x, w, c.bias.then_some(b)).as_vec();
    let r = Rng::new(77).normals(y.len());
    y.iter().zip(&r).map(|(a, b)| a * b).sum()
}

/// Analytic gradients against central differences at up to 25 random elements of every
/// input (the loss is bilinear, so differences are exact up to rounding).
fn check_fd(c: &Case, vals: &[Vec<F>; 3], grads: [&[F]; 3], rng: &mut Rng) {
    let h = 1e-5;
    for (i, g) in grads.iter().enumerate() {
        if i == 2 && !c.bias {
            continue;
        }
        let n = vals[i].len();
        for _ in 0..n.min(25) {
            let j = rng.below(n);
            let mut vp = vals.clone();
            vp[i][j] += h;
            let mut vm = vals.clone();
            vm[i][j] -= h;
            let num = (loss(c, &vp) - loss(c, &vm)) / (2.0 * h);
            let err = (num - g[j]).abs() / (1.0 + num.abs());
            assert!(
                err < 1e-7,
                "input {i} elem {j}: analytic {} numeric {num}, {c:?}",
                g[j]
            );
        }
    }
}

fn check_cases(transposed: bool, seed: u64) {
    let mut rng = Rng::new(seed);
    for t in 0..40 {
        let c = Case::random(&mut rng, transposed);
        check_case(&c, 1000 + t, &mut rng);
    }
}

/// `f()` with the split column layout forced on or off on this thread.
fn with_split<R>(split: bool, f: impl FnOnce() -> R) -> R {
    SPLIT_TEST.with(|s| s.set(Some(split)));
    let r = f();
    SPLIT_TEST.with(|s| s.set(None));
    r
}

/// One case, in both column layouts, against the composed path, finite differences and
/// its chunked self.
fn check_case(c: &Case, seed: u64, rng: &mut Rng) {
    let c = *c;
    for split in [false, true] {
        SPLIT_TEST.with(|s| s.set(Some(split)));
        let vals = random_vals(&c, seed);
        let fast = forward_backward(&c, true, &vals);
        let slow = forward_backward(&c, false, &vals);
        assert_close(&fast.0, &slow.0, 1e-12, "values", &c);
        assert_close(&fast.1, &slow.1, 1e-12, "grad x", &c);
        assert_close(&fast.2, &slow.2, 1e-12, "grad w", &c);
        assert_close(&fast.3, &slow.3, 1e-12, "grad b", &c);
        check_fd(&c, &vals, [&fast.1, &fast.2, &fast.3], rng);
        // one sample per chunk: same values, gradients up to summation order
        CHUNK_MAX_TEST.with(|m| m.set(Some(1)));
        let chunked = forward_backward(&c, true, &vals);
        CHUNK_MAX_TEST.with(|m| m.set(None));
        assert_eq!(chunked.0, fast.0, "chunked values, {c:?}");
        assert_eq!(chunked.1, fast.1, "chunked grad x, {c:?}");
        assert_close(&chunked.2, &fast.2, 1e-12, "chunked grad w", &c);
        assert_close(&chunked.3, &fast.3, 1e-12, "chunked grad b", &c);
        // a fixed weight: the same values and input gradient, bit for bit; no weight or
        // bias gradient (their zeros stay zeros)
        let frozen = forward_backward_pg(&c, true, ParamGrads::Skipped, &vals);
        assert_eq!(frozen.0, fast.0, "frozen values, {c:?}");
        assert_eq!(frozen.1, fast.1, "frozen grad x, {c:?}");
        assert!(frozen.2.iter().all(|&v| v == 0.0), "frozen grad w, {c:?}");
        assert!(frozen.3.iter().all(|&v| v == 0.0), "frozen grad b, {c:?}");
        // no room to keep the forward's columns: the backward builds them again, and
        // gives the same gradients bit for bit
        let hold = Kept::<F>::reserve(KEEP_MAX).expect("an empty budget");
        let rebuilt = forward_backward(&c, true, &vals);
        drop(hold);
        assert_eq!(rebuilt, fast, "columns rebuilt, {c:?}");
        SPLIT_TEST.with(|s| s.set(None));
    }
}

#[test]
fn conv2d_gemm_matches_composed_and_fd() {
    check_cases(false, 21);
}

/// Stride-1 convs with fewer outputs than inputs take the transposed-conv route (an RGB
/// head): kernels 2-3, padding 0 to k-1, odd sizes, batch 1 and 3, with and without bias.
#[test]
fn conv2d_few_outputs_matches_composed_and_fd() {
    let mut rng = Rng::new(23);
    let case = |b, cin, cout, h, w, k, pad, bias| Case {
        b,
        cin,
        cout,
        h,
        w,
        k,
        stride: 1,
        pad,
        groups: 1,
        bias,
        transposed: false,
    };
    for (i, c) in [
        case(3, 8, 3, 6, 5, 3, 1, true),
        case(1, 5, 2, 4, 7, 3, 0, false),
        case(2, 4, 3, 5, 5, 3, 2, true),
        case(2, 3, 1, 3, 6, 2, 1, false),
        case(3, 6, 3, 7, 4, 2, 0, true),
    ]
    .iter()
    .enumerate()
    {
        check_case(c, 2000 + i as u64, &mut rng);
    }
}

#[test]
fn conv_transpose2d_gemm_matches_composed_and_fd() {
    check_cases(true, 22);
}

/// The transposed conv is the adjoint of conv2d with the same weight:
/// `<conv2d(x, w), y> == <x, conv_transpose2d(y, w)>` (when the transposed conv's output
/// size is the conv's input size), grouped too.
#[test]
fn conv_transpose2d_is_adjoint_of_conv2d() {
    let dev = Cpu::default();
    let mut rng = Rng::new(5);
    let mut checked = 0;
    while checked < 30 {
        let c = Case::random(&mut rng, false);
        if !(c.h + 2 * c.pad - c.k).is_multiple_of(c.stride)
            || !(c.w + 2 * c.pad - c.k).is_multiple_of(c.stride)
        {
            continue;
        }
        checked += 1;
        let [xv, wv, _] = random_vals(&c, 7);
        let x: T4<F, Cpu> = dev.tensor_from_vec(xv.clone(), c.x_shape());
        let w: T4<F, Cpu> = dev.tensor_from_vec(wv, c.w_shape());
        let y = conv::conv2d_op(x, w.clone(), None, c.stride, c.pad, c.groups, Computed);
        let ys = *y.shape();
        let yv = y.as_vec();
        let rv = rng.normals(yv.len());
        let r: T4<F, Cpu> = dev.tensor_from_vec(rv.clone(), ys);
        let xt = conv::conv_transpose2d_op(r, w, None, c.stride, c.pad, c.groups, Computed);
        assert_eq!(*xt.shape(), c.x_shape(), "{c:?}");
        let l: F = yv.iter().zip(&rv).map(|(a, b)| a * b).sum();
        let rr: F = xv.iter().zip(xt.as_vec()).map(|(a, b)| a * b).sum();
        assert!(
            (l - rr).abs() < 1e-10 * (1.0 + l.abs()),
            "{l} vs {rr}, {c:?}"
        );
    }
}

/// A 3x3 box kernel on a hand-worked image: every output is the sum of the 3x3
/// neighbourhood inside the image (zero padding), plus the bias.
#[test]
fn conv2d_gemm_hand_example() {
    let dev = Cpu::default();
    let x: T4<F, Cpu> = dev.tensor_from_vec((1..=9).map(F::from).collect(), (1, 1, 3, 3));
    let w: T4<F, Cpu> = dev.tensor_from_vec(vec![1.0; 9], (1, 1, 3, 3));
    let b: T1<F, Cpu> = dev.tensor_from_vec(vec![0.5], (1,));
    let y = conv::conv2d_op(x, w, Some(b), 1, 1, 1, Computed).as_vec();
    // 1 2 3 / 4 5 6 / 7 8 9
    let want = [12.0, 21.0, 16.0, 27.0, 45.0, 33.0, 24.0, 39.0, 28.0].map(|v| v + 0.5);
    assert_eq!(y, want);
}

/// Same inputs, one thread and four: bit-identical values and gradients (no reduction
/// order depends on scheduling), at sizes where gemm and the copy kernels go parallel.
#[test]
fn conv_gemm_bit_identical_across_thread_counts() {
    let cases = [
        (8, 32, 48, 16, 16, 3, 1, 1, 1, false),
        (8, 32, 64, 16, 15, 4, 2, 1, 2, false),
        (8, 64, 64, 16, 16, 3, 1, 1, 64, false),
        // groups of 16 channels (R3GAN E's 3x3): run side by side on 4 threads, one
        // after another (each product split) on 1
        (8, 64, 64, 16, 16, 3, 1, 1, 4, false),
        (8, 64, 32, 8, 8, 4, 2, 1, 1, true),
        (8, 64, 64, 8, 8, 4, 2, 1, 4, true),
        (8, 64, 32, 9, 8, 3, 1, 1, 2, true),
        // an RGB head: the transposed-conv route
        (8, 32, 3, 16, 16, 3, 1, 1, 1, false),
    ];
    for (b, cin, cout, h, w, k, stride, pad, groups, transposed) in cases {
        let c = Case {
            b,
            cin,
            cout,
            h,
            w,
            k,
            stride,
            pad,
            groups,
            bias: true,
            transposed,
        };
        let mut rng = Rng::new(3);
        let vals: [Vec<f32>; 3] = c
            .sizes()
            .map(|n| rng.normals(n).into_iter().map(|v| v as f32).collect());
        for split in [false, true] {
            let on = |threads: usize| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap()
                    .install(|| with_split(split, || forward_backward(&c, true, &vals)))
            };
            let one = on(1);
            let four = on(4);
            assert_eq!(one.0, four.0, "values, split {split}, {c:?}");
            assert_eq!(one.1, four.1, "grad x, split {split}, {c:?}");
            assert_eq!(one.2, four.2, "grad w, split {split}, {c:?}");
            assert_eq!(one.3, four.3, "grad b, split {split}, {c:?}");
            // and the f32 op agrees with the composed path
            let slow = forward_backward(&c, false, &vals);
            for (a, s) in one.0.iter().zip(&slow.0) {
                assert!((a - s).abs() < 1e-3 * (1.0 + s.abs()), "{a} vs {s}, {c:?}");
            }
        }
    }
}

/// A `conv2d` forward on a tape that wants the weight gradient keeps its columns (the
/// whole batch's, in chunks) until its backward has run, or its tape is dropped; one that
/// would pass the budget, or has no tape or a fixed weight, keeps none.
#[test]
fn conv2d_keeps_columns_for_its_backward_within_budget() {
    let dev = Cpu::default();
    let mut rng = Rng::new(5);
    let x: T4<F, Cpu> = dev.tensor_from_vec(rng.normals(3 * 2 * 6 * 6), (3, 2, 6, 6));
    let w: T4<F, Cpu> = dev.tensor_from_vec(rng.normals(4 * 2 * 9), (4, 2, 3, 3));
    // rows cin * k * k = 18, columns b * ho * wo = 3 * 3 * 3 (stride 2, pad 1)
    let cols = 18 * 27;
    let fwd = |pg| {
        let mut g = Gradients::leaky();
        g.try_alloc_for(&w).unwrap();
        conv::conv2d_op(x.clone().traced(g), w.retaped(), None, 2, 1, 1, pg)
    };
    assert_eq!(kept_now(), 0);
    CHUNK_MAX_TEST.with(|m| m.set(Some(1)));
    let y = fwd(Computed);
    CHUNK_MAX_TEST.with(|m| m.set(None));
    assert_eq!(kept_now(), cols, "kept while the tape waits");
    let g = y.sum().backward();
    assert_eq!(kept_now(), 0, "released by the backward");
    assert!(g.get(&w).as_vec().iter().any(|&v| v != 0.0));
    drop(fwd(Computed));
    assert_eq!(kept_now(), 0, "released with an unused tape");
    let frozen = fwd(ParamGrads::Skipped);
    assert_eq!(kept_now(), 0, "a fixed weight needs no columns");
    drop(frozen);
    let plain = conv::conv2d_op(x.clone(), w.clone(), None, 2, 1, 1, Computed);
    assert_eq!(kept_now(), 0, "no tape, no backward");
    drop(plain);
    let hold = Kept::<F>::reserve(KEEP_MAX - cols + 1).unwrap();
    let y = fwd(Computed);
    assert_eq!(
        kept_now(),
        KEEP_MAX - cols + 1,
        "past the budget: nothing kept"
    );
    drop((y, hold));
    assert_eq!(kept_now(), 0);
}

/// A backward releases each op output's gradient as soon as the op that made it has
/// read it (`host::take`): through conv -> LeakyReLU -> transposed conv, the two
/// intermediate outputs' gradients are empty afterwards, while the input's and the
/// weights' are whole and equal to the composed path's.
#[test]
fn backward_releases_intermediate_gradients() {
    let dev = Cpu::default();
    let mut rng = Rng::new(9);
    let mut t = |s: (usize, usize, usize, usize)| -> T4<F, Cpu> {
        dev.tensor_from_vec(rng.normals(s.0 * s.1 * s.2 * s.3), s)
    };
    let (x, w1, w2) = (t((2, 3, 6, 6)), t((4, 3, 3, 3)), t((4, 2, 4, 4)));
    let grads = |fast: bool| {
        let h = if fast {
            conv::conv2d_op(
                x.clone().traced(Gradients::leaky()),
                w1.retaped(),
                None,
                1,
                1,
                1,
                Computed,
            )
        } else {
            let cache = IdxCache::default();
            ops::conv2d_composed(
                x.clone().traced(Gradients::leaky()),
                w1.retaped(),
                None,
                1,
                1,
                1,
                &cache,
            )
        };
        let h_id = h.retaped::<NoneTape>();
        let a = <Cpu as super::Dev<F>>::gated(h, None, 0.2);
        let a_id = a.retaped::<NoneTape>();
        let y = if fast {
            conv::conv_transpose2d_op(a, w2.retaped(), None, 2, 1, 1, Computed)
        } else {
            let cache = IdxCache::default();
            ops::conv_transpose2d_composed(a, w2.retaped(), None, 2, 1, 1, &cache)
        };
        let n = y.shape().num_elements();
        let mut g = y.reshape_like(&(n,)).sum::<(), Axis<0>>().backward();
        let held = |g: &mut Gradients<F, Cpu>, t: &T4<F, Cpu>| g.get_or_alloc_mut(t).unwrap().len();
        let released = [held(&mut g, &h_id), held(&mut g, &a_id)];
        let kept = [&x, &w1, &w2].map(|t| g.get(t).as_vec());
        (released, kept)
    };
    let (released, kept) = grads(true);
    assert_eq!(released, [0, 0], "intermediate gradients still held");
    let (_, reference) = grads(false);
    for (k, r) in kept.iter().zip(&reference) {
        assert_eq!(k.len(), r.len());
        for (a, b) in k.iter().zip(r) {
            assert!((a - b).abs() < 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}
