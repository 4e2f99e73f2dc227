//! The range checks of the `train` params: every error a [`ConfigError`] at the dotted key
//! it concerns (run when a pipeline is loaded, before anything trains).

use super::*;

impl Schedule {
    fn validate(
        &self,
        what: &str,
        ok: impl Fn(f64) -> bool,
        range: &str,
    ) -> Result<(), ConfigError> {
        for v in [Some(self.start), self.end].into_iter().flatten() {
            if !ok(v) {
                fail!(
                    format!("schedules.{what}"),
                    "schedules.{what}: values must be in {range}, got {v}"
                );
            }
        }
        if self.kind != Curve::Constant && (self.end.is_none() || self.images == 0) {
            fail!(
                format!("schedules.{what}"),
                "schedules.{what}: a {:?} schedule needs end and images > 0",
                self.kind
            );
        }
        Ok(())
    }
}

impl NetConfig {
    fn validate(&self, what: &str) -> Result<(), ConfigError> {
        if self.width == 0 || self.width > 4096 {
            fail!(
                format!("{what}.width"),
                "{what}.width must be in 1..=4096, got {}",
                self.width
            );
        }
        if let Some(m) = self.max_width {
            if m < self.width {
                fail!(
                    format!("{what}.max_width"),
                    "{what}.max_width ({m}) must be >= width ({})",
                    self.width
                );
            }
        }
        if let Some(d) = self.depth {
            if !(1..=16).contains(&d) {
                fail!(
                    format!("{what}.depth"),
                    "{what}.depth must be in 1..=16, got {d}"
                );
            }
        }
        if let Some(z) = self.z_dim {
            if !(1..=4096).contains(&z) {
                fail!(
                    format!("{what}.z_dim"),
                    "{what}.z_dim must be in 1..=4096, got {z}"
                );
            }
        }
        if let Some(e) = self.expansion {
            if !(e > 0.0 && e <= 16.0) {
                fail!(
                    format!("{what}.expansion"),
                    "{what}.expansion must be in (0, 16], got {e}"
                );
            }
        }
        if self.group_size == Some(0) {
            fail!(
                format!("{what}.group_size"),
                "{what}.group_size must be >= 1"
            );
        }
        match (self.arch, self.variant) {
            (Arch::R3gan, None) => fail!(
                format!("{what}.arch"),
                "{what}: arch r3gan needs variant: B | C | D | E"
            ),
            (Arch::R3gan, Some(_)) => {}
            (_, Some(_)) => fail!(
                format!("{what}.variant"),
                "{what}: variant is only for arch r3gan"
            ),
            _ => {}
        }
        if let Some(a) = self.residual_scale {
            if !(a.is_finite() && a.abs() <= 16.0) {
                fail!(
                    format!("{what}.residual_scale"),
                    "{what}.residual_scale must be finite with |alpha| <= 16, got {a}"
                );
            }
        }
        let resnetish = matches!(self.arch, Arch::Resnet | Arch::Selfmod);
        if (self.residual_scale.is_some() || self.learn_residual_scale.is_some()) && !resnetish {
            let key = match self.residual_scale {
                Some(_) => "residual_scale",
                None => "learn_residual_scale",
            };
            fail!(
                format!("{what}.{key}"),
                "{what}: residual_scale is for arch resnet / selfmod"
            );
        }
        if self.upsample.is_some() && !resnetish {
            fail!(
                format!("{what}.upsample"),
                "{what}: upsample is for arch resnet / selfmod"
            );
        }
        match self.body {
            Some(_) if self.arch != Arch::Selfmod => {
                fail!(format!("{what}.body"), "{what}: body is for arch selfmod")
            }
            Some(Arch::Resnet | Arch::Dcgan) | None => {}
            Some(b) => fail!(
                format!("{what}.body"),
                "{what}.body must be resnet or dcgan, got {b:?}"
            ),
        }
        if let Some(h) = self.mod_hidden {
            if self.arch != Arch::Selfmod || !(1..=4096).contains(&h) {
                fail!(
                    format!("{what}.mod_hidden"),
                    "{what}.mod_hidden must be in 1..=4096 and is for arch selfmod"
                );
            }
        }
        if self.mapping_depth.is_some() || self.mapping_width.is_some() {
            let key = match self.mapping_depth {
                Some(_) => format!("{what}.mapping_depth"),
                None => format!("{what}.mapping_width"),
            };
            if self.arch != Arch::Stylegan {
                fail!(
                    key,
                    "{what}: mapping_depth / mapping_width are for arch stylegan"
                );
            }
            if !(1..=16).contains(&self.mapping_depth.unwrap_or(8))
                || !(1..=4096).contains(&self.mapping_width.unwrap_or(512))
            {
                fail!(
                    key,
                    "{what}: mapping_depth must be in 1..=16, mapping_width in 1..=4096"
                );
            }
        }
        if self.arch != Arch::Stylegan {
            if self.noise.is_some() {
                fail!(format!("{what}.noise"), "{what}.noise is for arch stylegan");
            }
            if self.style_mixing.is_some() {
                fail!(
                    format!("{what}.style_mixing"),
                    "{what}.style_mixing is for arch stylegan"
                );
            }
        }
        if let Some(p) = self.style_mixing {
            if !(0.0..=1.0).contains(&p) {
                fail!(
                    format!("{what}.style_mixing"),
                    "{what}.style_mixing is a probability in [0, 1], got {p}"
                );
            }
        }
        if let Some(e) = self.embed_dim {
            if !matches!(self.arch, Arch::Mlp | Arch::R3gan | Arch::Stylegan) {
                fail!(
                    format!("{what}.embed_dim"),
                    "{what}.embed_dim is for the generators that concatenate z and embed(c): \
                     mlp, r3gan, stylegan"
                );
            }
            if !(1..=4096).contains(&e) {
                fail!(
                    format!("{what}.embed_dim"),
                    "{what}.embed_dim must be in 1..=4096, got {e}"
                );
            }
        }
        Ok(())
    }
}

impl TrainConfig {
    /// Range checks (run before anything trains).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.generator.validate("generator")?;
        self.discriminator.validate("discriminator")?;
        if self.discriminator.z_dim.is_some() {
            fail!("discriminator.z_dim", "discriminator.z_dim makes no sense");
        }
        let d = &self.discriminator;
        if d.embed_dim.is_some() || d.noise.is_some() || d.style_mixing.is_some() {
            let key = match (d.embed_dim, d.noise) {
                (Some(_), _) => "discriminator.embed_dim",
                (None, Some(_)) => "discriminator.noise",
                (None, None) => "discriminator.style_mixing",
            };
            fail!(
                key,
                "discriminator: embed_dim, noise and style_mixing are generator keys"
            );
        }
        let g = &self.generator;
        if self.conditional == Some(true) {
            if g.arch == Arch::Dcgan && g.batch_norm == Some(false) {
                fail!(
                    "generator.batch_norm",
                    "generator.batch_norm: a conditional dcgan generator is conditioned \
                     through its batch norms (per-class gain and bias); drop batch_norm: false"
                );
            }
        } else if g.embed_dim.is_some() {
            fail!(
                "generator.embed_dim",
                "generator.embed_dim needs conditional: true"
            );
        }
        if matches!(self.discriminator.arch, Arch::Selfmod | Arch::Stylegan) {
            fail!(
                "discriminator.arch",
                "discriminator.arch selfmod / stylegan does not exist: use resnet or dcgan"
            );
        }
        if (self.generator.arch == Arch::Mlp) != (self.discriminator.arch == Arch::Mlp) {
            // the net that is not an mlp is the one to change
            let key = match self.generator.arch {
                Arch::Mlp => "discriminator.arch",
                _ => "generator.arch",
            };
            fail!(
                key,
                "mlp nets are for 2-D points: use them for both generator and discriminator"
            );
        }
        if !(self.gamma >= 0.0 && self.gamma.is_finite()) {
            fail!("gamma", "gamma must be >= 0, got {}", self.gamma);
        }
        if !self.penalties.is_empty() && self.gamma == 0.0 && self.schedules.gamma.is_none() {
            fail!(
                "gamma",
                "gamma: penalties {:?} with gamma 0 do nothing; give their weight (e.g. \
                 gamma: 0.1) or drop the penalties",
                self.penalties
            );
        }
        if self.discriminator.batch_norm == Some(true) && !self.penalties.is_empty() {
            fail!(
                "discriminator.batch_norm",
                "discriminator.batch_norm: batch norm in D cannot be combined with penalties \
                 (R1/R2 are taken per sample, and batch statistics would mix the samples); \
                 drop batch_norm or the penalties"
            );
        }
        let mut seen = vec![];
        for p in &self.penalties {
            if seen.contains(p) {
                fail!("penalties", "penalty {p:?} listed twice");
            }
            seen.push(*p);
        }
        if self.lazy_interval == Some(0) {
            fail!("lazy_interval", "lazy_interval must be >= 1");
        }
        for (name, o) in [
            ("optimizer", Some(&self.optimizer)),
            ("optimizer_g", self.optimizer_g.as_ref()),
            ("optimizer_d", self.optimizer_d.as_ref()),
        ] {
            let Some(o) = o else { continue };
            if !(o.lr > 0.0 && o.lr <= 1.0) {
                fail!(
                    format!("{name}.lr"),
                    "{name}.lr must be in (0, 1], got {}",
                    o.lr
                );
            }
            for b in o.betas {
                if !(0.0..1.0).contains(&b) {
                    fail!(
                        format!("{name}.betas"),
                        "{name}.betas must be in [0, 1), got {:?}",
                        o.betas
                    );
                }
            }
            if !(o.eps > 0.0 && o.eps < 1.0) {
                fail!(
                    format!("{name}.eps"),
                    "{name}.eps must be in (0, 1), got {}",
                    o.eps
                );
            }
        }
        if !(1..=64).contains(&self.d_steps) {
            fail!("d_steps", "d_steps must be in 1..=64, got {}", self.d_steps);
        }
        if !(1..=65536).contains(&self.batch) {
            fail!("batch", "batch must be in 1..=65536, got {}", self.batch);
        }
        if let Some(e) = self.ema {
            if !(0.0..1.0).contains(&e) {
                fail!("ema", "ema must be in [0, 1), got {e}");
            }
        }
        if let Some(h) = self.ema_halflife_kimg {
            if self.ema.is_some() {
                fail!(
                    "ema_halflife_kimg",
                    "ema and ema_halflife_kimg are exclusive: give a beta or a half-life"
                );
            }
            if !(h >= 0.0 && h.is_finite()) {
                fail!(
                    "ema_halflife_kimg",
                    "ema_halflife_kimg must be >= 0, got {h}"
                );
            }
        }
        if let Some(r) = self.ema_rampup {
            if !(r >= 0.0 && r.is_finite()) {
                fail!(
                    "ema_rampup",
                    "ema_rampup must be >= 0 (0: no ramp-up), got {r}"
                );
            }
        }
        let sc = &self.schedules;
        let lr_ok = |v: f64| v > 0.0 && v <= 1.0;
        for (name, s) in [("lr", &sc.lr), ("lr_g", &sc.lr_g), ("lr_d", &sc.lr_d)] {
            if let Some(s) = s {
                s.validate(name, lr_ok, "(0, 1]")?;
            }
        }
        if let Some(s) = &sc.gamma {
            s.validate("gamma", |v| v >= 0.0 && v.is_finite(), "[0, inf)")?;
        }
        if let Some(s) = &sc.beta2 {
            s.validate("beta2", |v| (0.0..1.0).contains(&v), "[0, 1)")?;
        }
        if let Some(s) = &sc.ema_halflife_kimg {
            if self.ema_halflife_kimg.is_none() {
                fail!(
                    "schedules.ema_halflife_kimg",
                    "schedules.ema_halflife_kimg needs ema_halflife_kimg (the EMA mode)"
                );
            }
            s.validate(
                "ema_halflife_kimg",
                |v| v >= 0.0 && v.is_finite(),
                "[0, inf)",
            )?;
        }
        if !(self.hvp_delta > 0.0 && self.hvp_delta < 1.0) {
            fail!(
                "hvp_delta",
                "hvp_delta must be in (0, 1), got {}",
                self.hvp_delta
            );
        }
        Ok(())
    }
}
