// Included by kernel files (`// #include gelu`): nn.GELU(), the erf form, in f32.

// GELU through erfc so that negative inputs keep their relative accuracy (no 1 - erf cancellation).
// erfc(z) ~= t * exp(-z^2 + P(t)), t = 1 / (1 + z/2): the Chebyshev fit of Numerical Recipes
// (erfcc, fractional error < 1.2e-7 for all z >= 0).
fn gelu(v: f32) -> f32 {
    let z = abs(v) * 0.70710678118654752;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
          + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let erfc_z = t * exp(p - z * z);
    // gelu(v) = v/2 (1 + erf(v/sqrt2)); erf(v/sqrt2) = sign(v) (1 - erfc(|v|/sqrt2))
    return select(0.5 * v * erfc_z, v - 0.5 * v * erfc_z, v >= 0.0);
}
