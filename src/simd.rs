//! Run-time choice of the vector unit for the crate's own hot loops. The crate is built for baseline
//! x86-64 (the images run on any such CPU), so only a function compiled with AVX-512 or AVX2 enabled
//! may use those units; [`multiversion!`] compiles a loop for each and picks one per call from what
//! the CPU reports. The loops are written so that the compiler can vectorise them (fixed-size lanes,
//! no float reductions it may not reorder) and do the same arithmetic on every unit (Rust does not
//! contract a·b + c into an FMA), so results do not depend on the CPU.

/// `multiversion! { /// docs \n fn name(arg: Type, ...) -> Ret = body; }` defines `name`, which calls
/// `body(args)` (an `#[inline(always)]` function) compiled for AVX-512F, for AVX2 + FMA, or as built,
/// the widest the CPU has.
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") {
                    // SAFETY: the CPU has AVX-512F (checked just above).
                    return unsafe { avx512($($arg),*) };
                }
                if has!("avx2") && has!("fma") {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// bf16 (as its bits) to f32: exact (bf16 is f32's upper half).
#[inline(always)]
pub(crate) fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

/// f32 to bf16 bits, rounded to nearest even as libtorch's cast (finite values only).
#[inline(always)]
pub(crate) fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn bf16_rounding_is_libtorchs() {
        let xs = Tensor::randn([4096], (Kind::Float, tch::Device::Cpu)) * 3.0;
        let want = Vec::<f32>::try_from(xs.to_kind(Kind::BFloat16).to_kind(Kind::Float)).unwrap();
        let got: Vec<f32> = Vec::<f32>::try_from(&xs)
            .unwrap()
            .iter()
            .map(|&v| bf16_to_f32(f32_to_bf16(v)))
            .collect();
        assert_eq!(got, want);
    }
}
