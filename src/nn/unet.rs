//! A UNet for images, with the anchor as extra input channels or through cross-attention.
//!
//! The layout follows DDPM's: a 3×3 stem, levels of residual blocks (GroupNorm, SiLU, 3×3
//! convolutions, the noise embedding added per channel) with self-attention at chosen
//! resolutions, stride-2 downsampling, a middle block, and the mirror path upwards with skip
//! connections. Data stays flat (`[n, c·h·w]`) outside; the network reshapes inside.

use super::class_input::{must_add, null_rows, ClassInput};
use super::embedding::{
    embed_times, gap_input, with_zero_inputs, with_zero_inputs_at, NoiseEmbedding,
};
use super::init::{self, conv};
use super::norm::GroupNorm;
use super::IntegrationNet;
use super::{
    concat_channels, conv2d_in, self_attention, shift_channels, silu, upsample_nearest, Layout,
};
use crate::error::{invalid_config, Result};
use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

/// How the anchor reaches the [`UNet`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AnchorInput {
    /// Concatenated to the noisy image as extra input channels.
    #[default]
    Channels,
    /// Cut into `patch × patch` tokens that every attention block also attends to (keys and
    /// values), so the anchor acts as a conditioning sequence rather than a pixel-aligned
    /// image. The image sides must be multiples of `patch`.
    CrossAttention {
        /// Side of a square patch, in pixels.
        patch: usize,
    },
}

/// Configuration of [`UNet`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// Image channels (1 for MNIST, 3 for CIFAR-10).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Pixels per side folded into channels before the first level (space-to-depth) and
    /// unfolded after the last: 2 runs the whole network at half resolution, about 4× cheaper,
    /// which matters on a CPU. 1 keeps the full resolution. Must divide the image sides.
    pub patch: usize,
    /// Feature channels of the first level.
    pub base_channels: usize,
    /// Per level, the multiple of `base_channels`; each level after the first halves the
    /// resolution.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the way down (one more on the way up).
    pub res_blocks: usize,
    /// Resolutions (the smaller image side at a level) with self-attention after each block;
    /// the middle block always has one.
    pub attention_resolutions: Vec<usize>,
    /// Attention heads; must divide the channels of every level with attention.
    pub heads: usize,
    /// GroupNorm groups; must divide every level's channels.
    pub groups: usize,
    /// Embedding of the noise level.
    pub embedding: NoiseEmbedding,
    /// How the anchor enters.
    pub anchor: AnchorInput,
    /// A target-time input (a flow-map network, [`IntegrationNet::takes_target_time`]): the
    /// embedding of the gap to the target time joins the noise level's, its weights starting
    /// at zero.
    pub target_time: bool,
    /// A class input ([`ClassInput`]): the one-hot label joins the noise level's embedding
    /// (EDM's `map_label`), its weights starting at zero. `None`: unconditional.
    pub classes: Option<ClassInput>,
}

impl Default for UNetConfig {
    /// A small UNet for 28×28 grey images (MNIST): 2×2 pixels folded into channels, then
    /// 32/64/64 channels at 14/7/4, one block per level, attention at 7×7, the anchor as an input
    /// channel.
    fn default() -> Self {
        UNetConfig {
            channels: 1,
            height: 28,
            width: 28,
            patch: 2,
            base_channels: 32,
            channel_mult: vec![1, 2, 2],
            res_blocks: 1,
            attention_resolutions: vec![7],
            heads: 4,
            groups: 8,
            embedding: NoiseEmbedding::default(),
            anchor: AnchorInput::Channels,
            target_time: false,
            classes: None,
        }
    }
}

impl UNetConfig {
    /// Values per example, `channels·height·width`.
    pub fn dim(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Checks the configuration without building anything.
    pub fn validate(&self) -> Result<()> {
        const NAME: &str = "UNetConfig";
        for (field, value) in [
            ("channels", self.channels),
            ("height", self.height),
            ("width", self.width),
            ("patch", self.patch),
            ("base_channels", self.base_channels),
            ("heads", self.heads),
            ("groups", self.groups),
        ] {
            if value == 0 {
                return Err(invalid_config(NAME, field, "must be at least 1"));
            }
        }
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return Err(invalid_config(
                NAME,
                "channel_mult",
                "needs at least one level, each multiple at least 1",
            ));
        }
        if !self.height.is_multiple_of(self.patch) || !self.width.is_multiple_of(self.patch) {
            return Err(invalid_config(
                NAME,
                "patch",
                format!(
                    "{} does not divide the image sides {}×{}",
                    self.patch, self.height, self.width
                ),
            ));
        }
        let levels = self.channel_mult.len();
        if (self.height.min(self.width) / self.patch) >> (levels - 1) == 0 {
            return Err(invalid_config(
                NAME,
                "channel_mult",
                format!(
                    "{levels} levels halve a {}×{} image below one pixel",
                    self.height, self.width
                ),
            ));
        }
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            let ch = self.base_channels * mult;
            if !ch.is_multiple_of(self.groups) {
                return Err(invalid_config(
                    NAME,
                    "groups",
                    format!("{} groups do not divide {ch} channels", self.groups),
                ));
            }
            let attends = self.attends(level) || level + 1 == levels;
            if attends && !ch.is_multiple_of(self.heads) {
                return Err(invalid_config(
                    NAME,
                    "heads",
                    format!("{} heads do not divide {ch} channels", self.heads),
                ));
            }
        }
        if let AnchorInput::CrossAttention { patch } = self.anchor {
            if patch == 0 || !self.height.is_multiple_of(patch) || !self.width.is_multiple_of(patch)
            {
                return Err(invalid_config(
                    NAME,
                    "anchor",
                    format!(
                        "the patch side {patch} must divide the image sides {}×{}",
                        self.height, self.width
                    ),
                ));
            }
        }
        if let Some(classes) = self.classes {
            classes.validate()?;
        }
        self.embedding.validate()
    }

    /// The resolution (smaller side) at `level`.
    fn resolution(&self, level: usize) -> usize {
        // Stride-2 convolutions with padding 1 map a side s to ceil(s/2).
        (0..level).fold(self.height.min(self.width) / self.patch, |s, _| {
            s.div_ceil(2)
        })
    }

    fn attends(&self, level: usize) -> bool {
        self.attention_resolutions.contains(&self.resolution(level))
    }

    /// Validates the configuration and builds the network with weights drawn from `seed`.
    ///
    /// ```
    /// # #[cfg(any(feature = "flex", feature = "ndarray"))] {
    /// use integration_flow::backend::Cpu;
    /// use integration_flow::nn::{IntegrationNet, UNetConfig};
    /// let config = UNetConfig { base_channels: 16, channel_mult: vec![1, 2], ..Default::default() };
    /// let unet = config.init::<Cpu>(&Default::default(), 0)?;
    /// assert_eq!(unet.dim(), 784);
    /// # }
    /// # Ok::<(), integration_flow::Error>(())
    /// ```
    pub fn init<B: Backend>(&self, device: &B::Device, seed: u64) -> Result<UNet<B>> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let rng = &mut rng;
        let base = self.base_channels;
        let emb = 4 * base;
        let folded = self.channels * self.patch * self.patch;
        let (stem_in, context) = match self.anchor {
            AnchorInput::Channels => (2 * folded, None),
            AnchorInput::CrossAttention { patch } => {
                let tokens = (self.height / patch) * (self.width / patch);
                let position: Vec<f32> = (0..tokens * base)
                    .map(|_| rng.random_range(-0.02f32..0.02))
                    .collect();
                let position = Tensor::from_data(TensorData::new(position, [tokens, base]), device);
                (
                    folded,
                    Some(AnchorTokens {
                        patch: init::linear(self.channels * patch * patch, base, rng, device),
                        position: Param::from_tensor(position),
                        side: patch,
                    }),
                )
            }
        };
        let context_dim = context.as_ref().map(|_| base);
        let stem = conv(stem_in, base, 3, 1, rng, device, false);
        let embed_in = init::linear(self.embedding.dim(), emb, rng, device);
        let embed_out = init::linear(emb, emb, rng, device);

        let levels = self.channel_mult.len();
        let mut down = Vec::new();
        let mut skips = vec![base];
        let mut ch = base;
        for (level, &mult) in self.channel_mult.iter().enumerate() {
            let out = base * mult;
            for _ in 0..self.res_blocks {
                down.push(self.block(ch, out, emb, level, context_dim, rng, device));
                ch = out;
                skips.push(ch);
            }
            if level + 1 < levels {
                down.push(Stage::Down(conv(ch, ch, 3, 2, rng, device, false)));
                skips.push(ch);
            }
        }
        let middle = vec![
            self.block(ch, ch, emb, usize::MAX, context_dim, rng, device),
            self.block(ch, ch, emb, usize::MAX - 1, context_dim, rng, device),
        ];
        let mut up = Vec::new();
        for (level, &mult) in self.channel_mult.iter().enumerate().rev() {
            let out = base * mult;
            for _ in 0..=self.res_blocks {
                let skip = skips.pop().unwrap_or(base);
                up.push(self.block(ch + skip, out, emb, level, context_dim, rng, device));
                ch = out;
            }
            if level > 0 {
                up.push(Stage::Up(conv(ch, ch, 3, 1, rng, device, false)));
            }
        }
        let unet = UNet {
            stem,
            embed_in,
            embed_out,
            context,
            down,
            middle,
            up,
            out_norm: GroupNorm::new(self.groups, ch, device),
            out_conv: conv(ch, folded, 3, 1, rng, device, true),
            frequencies: self.embedding.frequencies(),
            shape: [self.channels, self.height, self.width],
            patch: self.patch,
            target_time: false,
            classes: None,
            config: UNetConfig {
                target_time: false,
                classes: None,
                ..self.clone()
            },
        };
        let unet = match self.target_time {
            true => unet.with_target_time()?,
            false => unet,
        };
        match self.classes {
            Some(classes) => unet.with_classes(classes),
            None => Ok(unet),
        }
    }

    /// A residual block at `level` (the middle block's first block gets attention: passing
    /// `usize::MAX` as the level asks for it, `usize::MAX − 1` not).
    #[allow(clippy::too_many_arguments)]
    fn block<B: Backend>(
        &self,
        c_in: usize,
        c_out: usize,
        emb: usize,
        level: usize,
        context: Option<usize>,
        rng: &mut StdRng,
        device: &B::Device,
    ) -> Stage<B> {
        let attends = match level {
            usize::MAX => true,
            l if l == usize::MAX - 1 => false,
            l => self.attends(l),
        };
        let residual = ResBlock {
            norm1: GroupNorm::new(self.groups, c_in, device),
            conv1: conv(c_in, c_out, 3, 1, rng, device, false),
            embedding: init::linear(emb, c_out, rng, device),
            norm2: GroupNorm::new(self.groups, c_out, device),
            conv2: conv(c_out, c_out, 3, 1, rng, device, true),
            shortcut: (c_in != c_out).then(|| conv(c_in, c_out, 1, 1, rng, device, false)),
        };
        let attention = attends.then(|| Attention {
            norm: GroupNorm::new(self.groups, c_out, device),
            qkv: init::linear(c_out, 3 * c_out, rng, device),
            context: context.map(|d| init::linear(d, 2 * c_out, rng, device)),
            proj: zero_linear(c_out, c_out, device),
            heads: self.heads,
        });
        Stage::Block(Block {
            residual,
            attention,
        })
    }
}

fn zero_linear<B: Backend>(d_in: usize, d_out: usize, device: &B::Device) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(Tensor::zeros([d_in, d_out], device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

/// A residual block: GroupNorm, SiLU, 3×3 conv, plus the embedding per channel, GroupNorm,
/// SiLU, 3×3 conv, plus the (1×1-projected) input.
#[derive(Module, Debug)]
struct ResBlock<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    embedding: Linear<B>,
    norm2: GroupNorm<B>,
    conv2: Conv2d<B>,
    shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResBlock<B> {
    /// `x` and the output in `layout`.
    fn forward(&self, x: Tensor<B, 4>, emb: Tensor<B, 2>, layout: Layout) -> Tensor<B, 4> {
        let h = conv2d_in(
            &self.conv1,
            self.norm1.forward_silu(x.clone(), layout),
            layout,
        );
        let h = shift_channels(h, self.embedding.forward(emb), layout);
        let h = conv2d_in(&self.conv2, self.norm2.forward_silu(h, layout), layout);
        match &self.shortcut {
            Some(shortcut) => conv2d_in(shortcut, x, layout) + h,
            None => x + h,
        }
    }
}

/// Multi-head self-attention over the pixels of a feature map, residual; with anchor tokens
/// (`context`), the keys and values also include the anchor's.
#[derive(Module, Debug)]
struct Attention<B: Backend> {
    norm: GroupNorm<B>,
    qkv: Linear<B>,
    context: Option<Linear<B>>,
    proj: Linear<B>,
    heads: usize,
}

impl<B: Backend> Attention<B> {
    /// `x` in `layout`; the attention itself is [`self_attention`] (one fused op for
    /// channels-last maps on the CPU backend).
    fn forward(
        &self,
        x: Tensor<B, 4>,
        tokens: Option<&Tensor<B, 3>>,
        layout: Layout,
    ) -> Tensor<B, 4> {
        let normed = self.norm.forward(x.clone(), layout);
        // The anchor's keys and values, `[n, tokens, 2c]`.
        let context = match (&self.context, tokens) {
            (Some(context), Some(tokens)) => Some(context.forward(tokens.clone())),
            _ => None,
        };
        let pair = (&self.qkv, &self.proj);
        x + self_attention(normed, pair, self.heads, context, layout)
    }
}

/// The anchor as a token sequence: non-overlapping patches, linearly embedded, plus a learned
/// position embedding.
#[derive(Module, Debug)]
struct AnchorTokens<B: Backend> {
    patch: Linear<B>,
    position: Param<Tensor<B, 2>>,
    side: usize,
}

impl<B: Backend> AnchorTokens<B> {
    fn forward(&self, anchor: Tensor<B, 4>) -> Tensor<B, 3> {
        let [n, c, h, w] = anchor.dims();
        let p = self.side;
        let (rows, cols) = (h / p, w / p);
        let patches = anchor
            .reshape([n, c, rows, p, cols, p])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([n, rows * cols, c * p * p]);
        self.patch.forward(patches) + self.position.val().unsqueeze_dim(0)
    }
}

/// A residual block, optionally followed by attention.
#[derive(Module, Debug)]
struct Block<B: Backend> {
    residual: ResBlock<B>,
    attention: Option<Attention<B>>,
}

/// One stage of the down or up path.
// A network holds a handful of stages; their size in memory does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
enum Stage<B: Backend> {
    /// A residual block, optionally followed by attention.
    Block(Block<B>),
    /// A stride-2 convolution.
    Down(Conv2d<B>),
    /// Nearest ×2 upsampling (cropped to the skip's size), then a 3×3 convolution.
    Up(Conv2d<B>),
}

/// A UNet taking `[c_in·x_t, anchor]` as images; build it with [`UNetConfig::init`].
#[derive(Module, Debug)]
pub struct UNet<B: Backend> {
    stem: Conv2d<B>,
    embed_in: Linear<B>,
    embed_out: Linear<B>,
    context: Option<AnchorTokens<B>>,
    down: Vec<Stage<B>>,
    middle: Vec<Stage<B>>,
    up: Vec<Stage<B>>,
    out_norm: GroupNorm<B>,
    out_conv: Conv2d<B>,
    #[module(skip)]
    frequencies: Vec<f32>,
    #[module(skip)]
    shape: [usize; 3],
    #[module(skip)]
    patch: usize,
    #[module(skip)]
    target_time: bool,
    #[module(skip)]
    classes: Option<ClassInput>,
    /// The configuration that builds this architecture (`target_time` and `classes` follow
    /// the network).
    #[module(skip)]
    config: UNetConfig,
}

impl<B: Backend> UNet<B> {
    /// `[channels, height, width]` of the images.
    pub fn image_shape(&self) -> [usize; 3] {
        self.shape
    }
}

/// Space-to-depth: images `[n, c, h, w]` → feature maps of `c·p²` channels (channel
/// `(c, py, px)`) at `h/p × w/p`, in `layout`.
fn fold<B: Backend>(x: Tensor<B, 4>, p: usize, layout: Layout) -> Tensor<B, 4> {
    if p == 1 && layout == Layout::ChannelsFirst {
        return x;
    }
    let [n, c, h, w] = x.dims();
    let x = x.reshape([n, c, h / p, p, w / p, p]);
    let (permutation, folded) = match layout {
        Layout::ChannelsFirst => ([0, 1, 3, 5, 2, 4], [n, c * p * p, h / p, w / p]),
        Layout::ChannelsLast => ([0, 2, 4, 1, 3, 5], [n, h / p, w / p, c * p * p]),
    };
    x.permute(permutation).reshape(folded)
}

/// Depth-to-space, the inverse of [`fold`]: images `[n, c, h, w]` from feature maps in
/// `layout`.
fn unfold<B: Backend>(x: Tensor<B, 4>, p: usize, layout: Layout) -> Tensor<B, 4> {
    if p == 1 && layout == Layout::ChannelsFirst {
        return x;
    }
    let [n, cpp, h, w] = layout.nchw(x.dims());
    let c = cpp / (p * p);
    let (unfolded, permutation) = match layout {
        Layout::ChannelsFirst => ([n, c, p, p, h, w], [0, 1, 4, 2, 5, 3]),
        Layout::ChannelsLast => ([n, h, w, c, p, p], [0, 3, 1, 4, 2, 5]),
    };
    x.reshape(unfolded)
        .permute(permutation)
        .reshape([n, c, h * p, w * p])
}

fn run_block<B: Backend>(
    stage: &Stage<B>,
    x: Tensor<B, 4>,
    emb: &Tensor<B, 2>,
    tokens: Option<&Tensor<B, 3>>,
    layout: Layout,
) -> Tensor<B, 4> {
    match stage {
        Stage::Block(block) => {
            let h = block.residual.forward(x, emb.clone(), layout);
            match &block.attention {
                Some(a) => a.forward(h, tokens, layout),
                None => h,
            }
        }
        Stage::Down(conv) | Stage::Up(conv) => conv2d_in(conv, x, layout),
    }
}

impl<B: Backend> IntegrationNet<B> for UNet<B> {
    fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    fn forward(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        // A flow-map network's plain call is the denoiser: no gap to the target time.
        let gap = gap_input(self.target_time, None, &c_noise);
        self.run(x, c_noise, gap, None, anchor)
    }

    fn takes_target_time(&self) -> bool {
        self.target_time
    }

    fn network_config(&self) -> Option<super::NetworkConfig> {
        Some(super::NetworkConfig::UNet(self.config.clone()))
    }

    fn forward_to(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Tensor<B, 1>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let gap = self.target_time.then_some(gap);
        self.run(x, c_noise, gap, None, anchor)
    }

    fn class_input(&self) -> Option<ClassInput> {
        self.classes
    }

    fn forward_classes(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Option<Tensor<B, 1>>,
        classes: Tensor<B, 2>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let gap = gap_input(self.target_time, gap, &c_noise);
        self.run(x, c_noise, gap, Some(classes), anchor)
    }

    fn with_target_time(mut self) -> crate::Result<Self> {
        if !self.target_time {
            // The gap's embedding follows the noise level's in the first embedding layer
            // (before the class input, if any).
            let extra = 2 * self.frequencies.len();
            self.embed_in = with_zero_inputs_at(self.embed_in, extra, extra);
            self.target_time = true;
            self.config.target_time = true;
        }
        Ok(self)
    }

    fn with_classes(mut self, input: ClassInput) -> crate::Result<Self> {
        if must_add(self.classes, input)? {
            // The one-hot label comes last in the first embedding layer's input.
            self.embed_in = with_zero_inputs(self.embed_in, input.width());
            self.classes = Some(input);
            self.config.classes = Some(input);
        }
        Ok(self)
    }
}

impl<B: Backend> UNet<B> {
    fn run(
        &self,
        x: Tensor<B, 2>,
        c_noise: Tensor<B, 1>,
        gap: Option<Tensor<B, 1>>,
        classes: Option<Tensor<B, 2>>,
        anchor: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let n = x.dims()[0];
        let [c, height, width] = self.shape;
        let classes = classes.or_else(|| null_rows(self.classes, n, &x.device()));
        let x = x.reshape([n, c, height, width]);
        let anchor = anchor.reshape([n, c, height, width]);
        let mut embedding_input = vec![embed_times(c_noise, gap, &self.frequencies)];
        embedding_input.extend(classes);
        let emb = self
            .embed_out
            .forward(silu(self.embed_in.forward(Tensor::cat(embedding_input, 1))));
        let emb = silu(emb);
        let p = self.patch;
        // Channels-last feature maps where the fused kernels run (no transposes around each
        // convolution), channels-first elsewhere; the same function either way.
        let layout = Layout::for_backend::<B>();
        let (input, tokens) = match &self.context {
            None => {
                let (x, anchor) = (fold(x, p, layout), fold(anchor, p, layout));
                (concat_channels(x, anchor, layout), None)
            }
            Some(context) => (fold(x, p, layout), Some(context.forward(anchor))),
        };
        let tokens = tokens.as_ref();
        let mut h = conv2d_in(&self.stem, input, layout);
        let mut skips = vec![h.clone()];
        for stage in &self.down {
            h = run_block(stage, h, &emb, tokens, layout);
            skips.push(h.clone());
        }
        for stage in &self.middle {
            h = run_block(stage, h, &emb, tokens, layout);
        }
        for stage in &self.up {
            h =
                match stage {
                    Stage::Up(conv) => {
                        let [_, _, sh, sw] = skips
                            .last()
                            .map(|s| layout.nchw(s.dims()))
                            .unwrap_or([n, c, height / p, width / p]);
                        conv2d_in(conv, upsample_nearest(h, sh, sw, layout), layout)
                    }
                    block => {
                        let input = match skips.pop() {
                            Some(skip) => concat_channels(h, skip, layout),
                            None => h,
                        };
                        run_block(block, input, &emb, tokens, layout)
                    }
                };
        }
        let out = conv2d_in(
            &self.out_conv,
            self.out_norm.forward_silu(h, layout),
            layout,
        );
        unfold(out, p, layout).reshape([n, c * height * width])
    }
}

#[cfg(all(test, any(feature = "flex", feature = "ndarray")))]
mod tests {
    use super::*;
    use crate::backend::CpuAutodiff;
    use burn::tensor::activation::softmax;
    use burn::tensor::{Distribution, Tolerance};

    type Ad = CpuAutodiff;

    /// The attention block as first written (pixels-first: `[n, pixels, c]` sequences), the
    /// reference for the channels-first form.
    fn pixels_first(
        a: &Attention<Ad>,
        x: Tensor<Ad, 4>,
        tokens: Option<&Tensor<Ad, 3>>,
    ) -> Tensor<Ad, 4> {
        let [n, c, h, w] = x.dims();
        let seq = a
            .norm
            .forward(x.clone(), Layout::ChannelsFirst)
            .reshape([n, c, h * w])
            .swap_dims(1, 2);
        let qkv = a.qkv.forward(seq);
        let q = qkv.clone().narrow(2, 0, c);
        let mut k = qkv.clone().narrow(2, c, c);
        let mut v = qkv.narrow(2, 2 * c, c);
        if let (Some(context), Some(tokens)) = (&a.context, tokens) {
            let kv = context.forward(tokens.clone());
            k = Tensor::cat(vec![k, kv.clone().narrow(2, 0, c)], 1);
            v = Tensor::cat(vec![v, kv.narrow(2, c, c)], 1);
        }
        let d = c / a.heads;
        let split = |t: Tensor<Ad, 3>| {
            let len = t.dims()[1];
            t.reshape([n, len, a.heads, d]).swap_dims(1, 2)
        };
        let (q, k, v) = (split(q), split(k), split(v));
        let weights = softmax(q.matmul(k.swap_dims(2, 3)) / (d as f64).sqrt(), 3);
        let out = weights.matmul(v).swap_dims(1, 2).reshape([n, h * w, c]);
        let out = a.proj.forward(out).swap_dims(1, 2).reshape([n, c, h, w]);
        x + out
    }

    #[test]
    fn channels_first_attention_matches_the_pixels_first_form() {
        let device = Default::default();
        let mut rng = StdRng::seed_from_u64(5);
        for context in [None, Some(6)] {
            let c = 8;
            let attention = Attention::<Ad> {
                norm: GroupNorm::new(2, c, &device),
                qkv: init::linear(c, 3 * c, &mut rng, &device),
                context: context.map(|d| init::linear(d, 2 * c, &mut rng, &device)),
                // Not the zero start of a real block, so that the attention output counts.
                proj: init::linear(c, c, &mut rng, &device),
                heads: 2,
            };
            let x = Tensor::<Ad, 4>::random([3, c, 5, 3], Distribution::Normal(0.0, 1.0), &device)
                .require_grad();
            let tokens =
                context.map(|d| Tensor::<Ad, 3>::random([3, 4, d], Distribution::Default, &device));
            let ours = attention.forward(x.clone(), tokens.as_ref(), Layout::ChannelsFirst);
            let theirs = pixels_first(&attention, x.clone(), tokens.as_ref());
            let tolerance = Tolerance::rel_abs(1e-4, 1e-5);
            ours.to_data()
                .assert_approx_eq::<f32>(&theirs.to_data(), tolerance);
            let probe = Tensor::<Ad, 4>::random(x.dims(), Distribution::Default, &device);
            let g_ours = (ours * probe.clone()).sum().backward();
            let g_theirs = (theirs * probe).sum().backward();
            x.grad(&g_ours)
                .expect("dx")
                .into_data()
                .assert_approx_eq::<f32>(&x.grad(&g_theirs).expect("dx").into_data(), tolerance);
            let w = attention.qkv.weight.val();
            w.grad(&g_ours)
                .expect("dw")
                .into_data()
                .assert_approx_eq::<f32>(&w.grad(&g_theirs).expect("dw").into_data(), tolerance);
        }
    }
}
