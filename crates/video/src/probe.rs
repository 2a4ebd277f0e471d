//! Reading a clip's facts back with `ffprobe`: what tests and `vidfarm fetch` check against.

use crate::VideoError;
use std::path::Path;
use std::process::Command;

#[derive(Clone, Debug, PartialEq)]
pub struct ProbeInfo {
    pub codec: String,
    pub pix_fmt: String,
    pub width: u32,
    pub height: u32,
    pub frames: u32,
    pub fps: f64,
    pub duration_seconds: f64,
    /// The `moov` index comes before the media data.
    pub faststart: bool,
    /// The colour tags players read: matrix, range, primaries, transfer (`unknown` if absent).
    pub colour: [String; 4],
}

/// Runs `ffprobe` on a file (counting frames by decoding them).
pub fn probe(path: &Path) -> Result<ProbeInfo, VideoError> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries"])
        .arg("stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_read_frames,color_space,color_range,color_primaries,color_transfer:format=duration")
        .args(["-of", "json"])
        .arg(path)
        .output()
        .map_err(|e| VideoError::Frames(format!("cannot run ffprobe: {e}")))?;
    if !out.status.success() {
        return Err(VideoError::Frames(format!("ffprobe {}: {}", path.display(), String::from_utf8_lossy(&out.stderr))));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| VideoError::Frames(format!("ffprobe output: {e}")))?;
    let stream = &json["streams"][0];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let number = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<f64>().ok()).or_else(|| v.as_f64()).unwrap_or(0.0);
    let fps = text(&stream["r_frame_rate"])
        .split_once('/')
        .and_then(|(n, d)| Some(n.parse::<f64>().ok()? / d.parse::<f64>().ok()?))
        .unwrap_or(0.0);
    let bytes = std::fs::read(path).map_err(|e| VideoError::Frames(format!("{}: {e}", path.display())))?;
    let find = |tag: &[u8]| bytes.windows(4).position(|w| w == tag);
    let faststart = matches!((find(b"moov"), find(b"mdat")), (Some(m), Some(d)) if m < d);
    Ok(ProbeInfo {
        codec: text(&stream["codec_name"]),
        pix_fmt: text(&stream["pix_fmt"]),
        width: stream["width"].as_u64().unwrap_or(0) as u32,
        height: stream["height"].as_u64().unwrap_or(0) as u32,
        frames: number(&stream["nb_read_frames"]) as u32,
        fps,
        duration_seconds: number(&json["format"]["duration"]),
        faststart,
        colour: ["color_space", "color_range", "color_primaries", "color_transfer"].map(|tag| match text(&stream[tag]) {
            tag if tag.is_empty() => "unknown".to_string(),
            tag => tag,
        }),
    })
}
