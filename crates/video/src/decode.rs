//! Reading a clip back: the frames of an MP4's video stream as RGB, so an evaluation measures
//! what a user downloads, codec losses included.

use crate::{RgbFrames, VideoError};
use ffmpeg_next as ffmpeg;
use std::path::Path;

/// Decodes the best video stream of the file at `path` into RGB frames.
pub fn decode_mp4(path: &Path) -> Result<RgbFrames, VideoError> {
    let err = |doing: &'static str| move |source| VideoError::Ffmpeg { doing, path: path.to_path_buf(), source };
    ffmpeg::init().map_err(err("initialising for"))?;
    let mut input = ffmpeg::format::input(&path).map_err(err("opening"))?;
    let (stream_index, fps, parameters) = {
        let stream = input.streams().best(ffmpeg::media::Type::Video).ok_or(ffmpeg::Error::StreamNotFound).map_err(err("finding video in"))?;
        let rate = stream.avg_frame_rate();
        let fps = if rate.denominator() > 0 { (f64::from(rate.numerator()) / f64::from(rate.denominator())).round() as u32 } else { 0 };
        (stream.index(), fps, stream.parameters())
    };
    let mut decoder = ffmpeg::codec::context::Context::from_parameters(parameters)
        .and_then(|context| context.decoder().video())
        .map_err(err("opening the decoder for"))?;
    let (width, height) = (decoder.width(), decoder.height());
    let mut scaler = ffmpeg::software::scaling::Context::get(
        decoder.format(),
        width,
        height,
        ffmpeg::format::Pixel::RGB24,
        width,
        height,
        ffmpeg::software::scaling::Flags::BILINEAR,
    )
    .map_err(err("creating the colour converter for"))?;

    let mut frames = Vec::new();
    let row_bytes = width as usize * 3;
    let mut receive = |decoder: &mut ffmpeg::decoder::Video| {
        let mut decoded = ffmpeg::frame::Video::empty();
        while crate::received(decoder.receive_frame(&mut decoded)).map_err(err("decoding"))? {
            let mut rgb = ffmpeg::frame::Video::empty();
            scaler.run(&decoded, &mut rgb).map_err(err("converting a frame of"))?;
            let (stride, data) = (rgb.stride(0), rgb.data(0));
            frames.push((0..height as usize).flat_map(|y| &data[y * stride..y * stride + row_bytes]).copied().collect());
        }
        Ok::<(), VideoError>(())
    };
    for (stream, packet) in input.packets() {
        if stream.index() == stream_index {
            decoder.send_packet(&packet).map_err(err("decoding"))?;
            receive(&mut decoder)?;
        }
    }
    decoder.send_eof().map_err(err("finishing the decoder for"))?;
    receive(&mut decoder)?;
    Ok(RgbFrames { width, height, fps, frames })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode_mp4;

    #[test]
    fn decoding_gives_back_the_encoded_frames_closely() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip.mp4");
        let (w, h, n) = (32u32, 24u32, 9usize);
        // A grey ramp that brightens frame by frame.
        let frames: Vec<Vec<u8>> = (0..n).map(|f| (0..w * h * 3).map(|i| ((i / 3) % w * 4 + f as u32 * 8) as u8).collect()).collect();
        let clip = RgbFrames { width: w, height: h, fps: 8, frames };
        encode_mp4(&clip, &path).unwrap();
        let decoded = decode_mp4(&path).unwrap();
        assert_eq!((decoded.width, decoded.height, decoded.fps, decoded.frames.len()), (w, h, 8, n));
        for (a, b) in clip.frames.iter().zip(&decoded.frames) {
            let mean_error = a.iter().zip(b).map(|(&x, &y)| f64::from(x.abs_diff(y))).sum::<f64>() / a.len() as f64;
            assert!(mean_error < 4.0, "mean error {mean_error}");
        }
    }

    #[test]
    fn a_missing_or_broken_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(decode_mp4(&dir.path().join("missing.mp4")).is_err());
        let junk = dir.path().join("junk.mp4");
        std::fs::write(&junk, b"not a video").unwrap();
        assert!(decode_mp4(&junk).is_err());
    }
}
