//! Turning decoded frames into a clip: H.264 in yuv420p inside an MP4 with `+faststart`
//! (the index up front, so players start before the download ends), via FFmpeg's libraries;
//! and reading a clip's frames back.

use ffmpeg_next as ffmpeg;
use std::path::{Path, PathBuf};

pub mod decode;
pub mod probe;
pub use decode::decode_mp4;
pub use probe::{ProbeInfo, probe};

#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("frames: {0}")]
    Frames(String),
    #[error("FFmpeg while {doing} {path}: {source}")]
    Ffmpeg { doing: &'static str, path: PathBuf, source: ffmpeg::Error },
    #[error("FFmpeg has no H.264 encoder (install libx264 and an FFmpeg built with it)")]
    NoEncoder,
}

/// RGB frames of one clip, 8 bits per channel, rows packed.
pub struct RgbFrames {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub frames: Vec<Vec<u8>>,
}

impl RgbFrames {
    /// Builds frames from `[3, frames, height, width]` values in [-1, 1], as the VAE decodes them.
    pub fn from_planar_signed(values: &[f32], frames: usize, height: usize, width: usize, fps: u32) -> Result<Self, VideoError> {
        let plane = height * width;
        if values.len() != 3 * frames * plane {
            return Err(VideoError::Frames(format!(
                "{} values do not make 3 x {frames} x {height} x {width}",
                values.len()
            )));
        }
        // A NaN would become black without a word: a model that diverged must fail its clip.
        let not_numbers = values.iter().filter(|v| v.is_nan()).count();
        if not_numbers > 0 {
            return Err(VideoError::Frames(format!("{not_numbers} of {} values are NaN: the model's output is not a picture", values.len())));
        }
        let to_u8 = |v: f32| ((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round() as u8;
        let frames = (0..frames)
            .map(|f| {
                let mut rgb = Vec::with_capacity(plane * 3);
                for p in 0..plane {
                    for c in 0..3 {
                        rgb.push(to_u8(values[(c * frames + f) * plane + p]));
                    }
                }
                rgb
            })
            .collect();
        Ok(Self { width: width as u32, height: height as u32, fps, frames })
    }
}

/// The instruction set libx264 may use, when it must be capped. Its AVX-512 kernels (Debian's
/// libx264 164) read memory they never wrote: the same frames then encode to different bytes now
/// and then (measured here: 13 distinct outputs in 36 encodes of one 97-frame clip in one process;
/// with AVX2, 36 of 36 identical), which would break byte-identical clips across workers.
fn x264_instruction_set() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx2") {
        return Some("AVX2");
    }
    None
}

/// Encodes frames as an H.264 MP4 at `path`.
pub fn encode_mp4(clip: &RgbFrames, path: &Path) -> Result<(), VideoError> {
    let mut writer = Mp4Writer::create(path, clip.width, clip.height, clip.fps)?;
    let written = clip.frames.iter().try_for_each(|frame| writer.write_frame(frame)).and_then(|()| writer.finish());
    // A clip that failed once its file was made (a bad frame, the codec) leaves no partial file.
    if written.is_err() {
        let _ = std::fs::remove_file(path);
    }
    written
}

/// An H.264 MP4 written a frame at a time, so that a long clip need never be whole in memory.
/// Dropped before [`Mp4Writer::finish`], the file is left without its index: not a clip.
pub struct Mp4Writer {
    path: PathBuf,
    width: u32,
    height: u32,
    output: ffmpeg::format::context::Output,
    encoder: ffmpeg::encoder::Video,
    scaler: ffmpeg::software::scaling::Context,
    rgb: ffmpeg::frame::Video,
    stream_index: usize,
    time_base: ffmpeg::Rational,
    stream_time_base: ffmpeg::Rational,
    frames: u64,
}

/// Names what FFmpeg was doing, and to which file, when it failed.
fn ffmpeg_error<'a>(doing: &'static str, path: &'a Path) -> impl Fn(ffmpeg::Error) -> VideoError + 'a {
    move |source| VideoError::Ffmpeg { doing, path: path.to_path_buf(), source }
}

impl Mp4Writer {
    /// Opens `path` for a clip of `width` x `height` RGB frames at `fps`.
    pub fn create(path: &Path, width: u32, height: u32, fps: u32) -> Result<Self, VideoError> {
        let (w, h) = (width, height);
        if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 {
            return Err(VideoError::Frames(format!("size {w}x{h}: yuv420p needs even, positive sides")));
        }
        if fps == 0 {
            return Err(VideoError::Frames("a clip needs a positive fps".into()));
        }
        let err = |doing| ffmpeg_error(doing, path);
        ffmpeg::init().map_err(err("initialising for"))?;
        // x264's per-encode statistics are noise in a farm's logs; errors still show.
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);

        let mut output = ffmpeg::format::output(&path).map_err(err("creating"))?;
        let codec = ffmpeg::encoder::find(ffmpeg::codec::Id::H264).ok_or(VideoError::NoEncoder)?;
        let global_header = output.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
        let time_base = ffmpeg::Rational::new(1, fps as i32);

        let mut video = ffmpeg::codec::context::Context::new_with_codec(codec).encoder().video().map_err(err("configuring"))?;
        video.set_width(w);
        video.set_height(h);
        video.set_format(ffmpeg::format::Pixel::YUV420P);
        video.set_time_base(time_base);
        video.set_frame_rate(Some(ffmpeg::Rational::new(fps as i32, 1)));
        // What the converter below makes (swscale's default: BT.601, limited range), said in the
        // stream: untagged, players guess, and take HD sizes for BT.709, shifting the hues.
        video.set_colorspace(ffmpeg::color::Space::SMPTE170M);
        video.set_color_range(ffmpeg::color::Range::MPEG);
        video.set_color_primaries(ffmpeg::color::Primaries::SMPTE170M);
        video.set_color_transfer_characteristic(ffmpeg::color::TransferCharacteristic::SMPTE170M);
        if global_header {
            video.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
        }
        let mut options = ffmpeg::Dictionary::new();
        options.set("preset", "medium");
        options.set("crf", "18");
        if let Some(isa) = x264_instruction_set() {
            options.set("x264-params", &format!("asm={isa}"));
        }
        let encoder = video.open_as_with(codec, options).map_err(err("opening the encoder for"))?;

        let stream_index = {
            let mut stream = output.add_stream(codec).map_err(err("adding a stream to"))?;
            stream.set_parameters(&encoder);
            stream.set_time_base(time_base);
            stream.set_avg_frame_rate(ffmpeg::Rational::new(fps as i32, 1));
            stream.index()
        };
        let mut mux_options = ffmpeg::Dictionary::new();
        mux_options.set("movflags", "+faststart");
        output.write_header_with(mux_options).map_err(err("writing the header of"))?;
        let stream_time_base = output.stream(stream_index).map(|s| s.time_base()).unwrap_or(time_base);

        let scaler = ffmpeg::software::scaling::Context::get(
            ffmpeg::format::Pixel::RGB24,
            w,
            h,
            ffmpeg::format::Pixel::YUV420P,
            w,
            h,
            ffmpeg::software::scaling::Flags::BILINEAR,
        )
        .map_err(err("creating the colour converter for"))?;
        Ok(Self {
            path: path.to_path_buf(),
            width,
            height,
            output,
            encoder,
            scaler,
            rgb: ffmpeg::frame::Video::new(ffmpeg::format::Pixel::RGB24, w, h),
            stream_index,
            time_base,
            stream_time_base,
            frames: 0,
        })
    }

    /// Encodes the next frame: `width x height` RGB pixels, rows packed.
    pub fn write_frame(&mut self, pixels: &[u8]) -> Result<(), VideoError> {
        let (w, h) = (self.width, self.height);
        if pixels.len() != (w * h * 3) as usize {
            return Err(VideoError::Frames(format!("frame {} is not {w}x{h} RGB", self.frames)));
        }
        let row_bytes = (w * 3) as usize;
        let stride = self.rgb.stride(0);
        let data = self.rgb.data_mut(0);
        for (y, row) in pixels.chunks_exact(row_bytes).enumerate() {
            data[y * stride..y * stride + row_bytes].copy_from_slice(row);
        }
        let err = |doing| ffmpeg_error(doing, &self.path);
        let mut yuv = ffmpeg::frame::Video::empty();
        self.scaler.run(&self.rgb, &mut yuv).map_err(err("converting a frame for"))?;
        yuv.set_pts(Some(self.frames as i64));
        self.encoder.send_frame(&yuv).map_err(err("encoding a frame for"))?;
        self.frames += 1;
        self.write_packets()
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Drains the encoder's delayed frames and writes the index: the file is now a clip.
    pub fn finish(mut self) -> Result<(), VideoError> {
        if self.frames == 0 {
            return Err(VideoError::Frames("a clip needs frames".into()));
        }
        self.encoder.send_eof().map_err(ffmpeg_error("finishing the encoder for", &self.path))?;
        self.write_packets()?;
        self.output.write_trailer().map_err(ffmpeg_error("writing the trailer of", &self.path))
    }

    /// Muxes every packet the encoder has ready.
    fn write_packets(&mut self) -> Result<(), VideoError> {
        let mut packet = ffmpeg::Packet::empty();
        while received(self.encoder.receive_packet(&mut packet)).map_err(ffmpeg_error("encoding a frame for", &self.path))? {
            packet.set_stream(self.stream_index);
            packet.rescale_ts(self.time_base, self.stream_time_base);
            packet.write_interleaved(&mut self.output).map_err(ffmpeg_error("writing a packet to", &self.path))?;
        }
        Ok(())
    }
}

/// Whether a codec's `receive_*` call gave something; `false` when it wants more input or has
/// given all it had. Any other error is one: taken for "nothing more", it would cut a clip short.
fn received(result: Result<(), ffmpeg::Error>) -> Result<bool, ffmpeg::Error> {
    match result {
        Ok(()) => Ok(true),
        Err(ffmpeg::Error::Other { errno: ffmpeg::util::error::EAGAIN } | ffmpeg::Error::Eof) => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_clip_that_ffprobe_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        let (w, h, n) = (64usize, 48usize, 17usize);
        // A white square moving right on black.
        let mut values = vec![-1.0f32; 3 * n * h * w];
        for f in 0..n {
            for c in 0..3 {
                for y in 16..32 {
                    for x in (2 * f)..(2 * f + 16) {
                        values[((c * n + f) * h + y) * w + x] = 1.0;
                    }
                }
            }
        }
        let clip = RgbFrames::from_planar_signed(&values, n, h, w, 8).unwrap();
        encode_mp4(&clip, &path).unwrap();
        let info = probe(&path).unwrap();
        assert_eq!(info.codec, "h264");
        assert_eq!(info.pix_fmt, "yuv420p");
        assert_eq!((info.width, info.height, info.frames), (64, 48, 17));
        assert_eq!(info.fps, 8.0);
        assert!((info.duration_seconds - 17.0 / 8.0).abs() < 0.01, "{}", info.duration_seconds);
        assert!(info.faststart, "moov before mdat");
    }

    /// Only "want more" and "no more" end a codec's output; a real error is passed up.
    #[test]
    fn a_codec_error_is_not_taken_for_the_end() {
        assert!(received(Ok(())).unwrap());
        assert!(!received(Err(ffmpeg::Error::Other { errno: ffmpeg::util::error::EAGAIN })).unwrap());
        assert!(!received(Err(ffmpeg::Error::Eof)).unwrap());
        assert_eq!(received(Err(ffmpeg::Error::InvalidData)), Err(ffmpeg::Error::InvalidData));
    }

    /// The stream says how its colours were made (BT.601, limited range), as the converter made
    /// them; untagged, a player may take a 720p clip for BT.709.
    #[test]
    fn a_clip_says_which_colours_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        let clip = RgbFrames::from_planar_signed(&vec![0.5f32; 3 * 5 * 16 * 16], 5, 16, 16, 8).unwrap();
        encode_mp4(&clip, &path).unwrap();
        assert_eq!(probe(&path).unwrap().colour, ["smpte170m", "tv", "smpte170m", "smpte170m"].map(String::from));
    }

    /// Frames are checked as they come, and a clip ends only once it has some.
    #[test]
    fn a_writer_refuses_a_bad_frame_and_an_empty_clip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        let still = Mp4Writer::create(&path, 4, 2, 0).err().expect("fps 0").to_string();
        assert!(still.contains("positive fps"), "{still}");
        let empty = Mp4Writer::create(&path, 4, 2, 8).unwrap().finish().err().expect("no frames").to_string();
        assert!(empty.contains("needs frames"), "{empty}");
        let mut writer = Mp4Writer::create(&path, 4, 2, 8).unwrap();
        writer.write_frame(&[0; 24]).unwrap();
        let short = writer.write_frame(&[0; 23]).err().expect("a short frame").to_string();
        assert!(short.contains("frame 1 is not 4x2 RGB"), "{short}");
        writer.write_frame(&[0; 24]).unwrap();
        assert_eq!(writer.frames(), 2);
        writer.finish().unwrap();
        assert_eq!(probe(&path).unwrap().frames, 2);
        let partial = dir.path().join("partial.mp4");
        let bad = RgbFrames { width: 4, height: 2, fps: 8, frames: vec![vec![0; 24], vec![0; 23]] };
        assert!(encode_mp4(&bad, &partial).is_err());
        assert!(!partial.exists(), "a bad clip leaves no file behind");
    }

    #[test]
    fn bad_frames_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.mp4");
        let odd = RgbFrames { width: 3, height: 2, fps: 8, frames: vec![vec![0; 18]] };
        assert!(matches!(encode_mp4(&odd, &path), Err(VideoError::Frames(_))));
        let short = RgbFrames { width: 4, height: 2, fps: 8, frames: vec![vec![0; 5]] };
        assert!(matches!(encode_mp4(&short, &path), Err(VideoError::Frames(_))));
        assert!(RgbFrames::from_planar_signed(&[0.0; 5], 1, 2, 2, 8).is_err());
        let mut diverged = vec![0.0f32; 12];
        diverged[4] = f32::NAN;
        let error = RgbFrames::from_planar_signed(&diverged, 1, 2, 2, 8).err().expect("NaN").to_string();
        assert!(error.contains("1 of 12 values are NaN"), "{error}");
        let saturated = RgbFrames::from_planar_signed(&[f32::INFINITY; 12], 1, 2, 2, 8).unwrap();
        assert_eq!(saturated.frames[0], [255; 12], "out of range values clamp");
    }
}
