//! Audio for speech to text: what the channels deliver (OGG/Opus voice
//! notes from Telegram and WhatsApp; MP3, M4A/AAC, WAV, OGG/Vorbis and FLAC
//! audio) decoded to 16 kHz mono 16-bit WAV, which every transcription
//! server takes (whisper.cpp's server takes nothing else without ffmpeg).
//! Opus through libopus (the `opus` crate, which builds it from source),
//! in its Ogg pages read by the `ogg` crate; the rest through symphonia,
//! resampled by rubato. AMR (some MMS) is not decoded: it goes as it came.

use std::io::Cursor;

/// The sample rate speech models take.
pub const RATE: u32 = 16_000;

/// A decoded recording: WAV bytes and how long it is.
#[derive(Debug)]
pub struct Decoded {
    pub wav: Vec<u8>,
    pub secs: f64,
}

/// `bytes` as 16 kHz mono WAV, at most `max_secs` of it (a longer
/// recording is refused: a small file of a low bit rate can decode to a
/// great deal of sound).
pub fn to_wav(bytes: &[u8], max_secs: u32) -> Result<Decoded, String> {
    let max = RATE as usize * max_secs as usize;
    let samples = if is_ogg_opus(bytes) {
        opus(bytes, max)?
    } else {
        other(bytes, max)?
    };
    if samples.is_empty() {
        return Err("no sound in it".into());
    }
    Ok(Decoded {
        secs: samples.len() as f64 / f64::from(RATE),
        wav: wav(&samples, RATE, 1),
    })
}

fn too_long(max: usize) -> String {
    format!("longer than {} s", max / RATE as usize)
}

fn is_ogg_opus(bytes: &[u8]) -> bool {
    bytes.starts_with(b"OggS")
        && bytes[..bytes.len().min(128)]
            .windows(8)
            .any(|w| w == b"OpusHead")
}

/// An Ogg Opus stream (RFC 7845): the `OpusHead` packet (channels, the
/// samples to skip at the start), `OpusTags`, then audio packets, decoded
/// by libopus straight at 16 kHz; the last page's granule position says
/// where the sound ends.
fn opus(bytes: &[u8], max: usize) -> Result<Vec<i16>, String> {
    let unreadable = |e: ogg::OggReadError| format!("an unreadable Ogg file: {e}");
    let mut reader = ogg::PacketReader::new(Cursor::new(bytes));
    let head = reader
        .read_packet()
        .map_err(unreadable)?
        .ok_or("an empty Ogg file")?;
    let d = &head.data;
    if d.len() < 19 || &d[..8] != b"OpusHead" {
        return Err("no OpusHead in the Ogg file".into());
    }
    let (channels, mapping) = (d[9], d[18]);
    let pre_skip = usize::from(u16::from_le_bytes([d[10], d[11]]));
    let layout = match (channels, mapping) {
        (1, 0) => opus::Channels::Mono,
        (2, 0) => opus::Channels::Stereo,
        _ => return Err(format!("Opus with {channels} channels (mapping {mapping})")),
    };
    let stereo = channels == 2;
    let mut decoder = opus::Decoder::new(RATE, layout).map_err(|e| e.to_string())?;
    // 120 ms, the longest Opus packet, per channel.
    let mut frame = vec![0i16; RATE as usize * 120 / 1000 * 2];
    let mut pcm: Vec<i16> = Vec::new();
    let mut end_48k: Option<u64> = None;
    while let Some(packet) = reader.read_packet().map_err(unreadable)? {
        if packet.data.starts_with(b"OpusTags") {
            continue;
        }
        let n = decoder
            .decode(&packet.data, &mut frame, false)
            .map_err(|e| format!("an unreadable Opus packet: {e}"))?;
        if stereo {
            pcm.extend(
                frame[..2 * n]
                    .chunks_exact(2)
                    .map(|p| ((i32::from(p[0]) + i32::from(p[1])) / 2) as i16),
            );
        } else {
            pcm.extend_from_slice(&frame[..n]);
        }
        if pcm.len() > max + RATE as usize {
            return Err(too_long(max));
        }
        if packet.last_in_stream() || packet.last_in_page() {
            end_48k = Some(packet.absgp_page());
        }
    }
    // Positions count 48 kHz samples, whatever the decoding rate.
    let skip = pre_skip / 3;
    if let Some(end) = end_48k {
        let end = (end as usize).saturating_sub(pre_skip) / 3 + skip;
        pcm.truncate(end);
    }
    let pcm = pcm.split_off(skip.min(pcm.len()));
    if pcm.len() > max {
        return Err(too_long(max));
    }
    Ok(pcm)
}

/// Any other format symphonia reads: its first audio track, mixed to mono
/// and resampled to 16 kHz.
fn other(bytes: &[u8], max: usize) -> Result<Vec<i16>, String> {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::formats::{FormatOptions, TrackType};
    use symphonia::core::io::MediaSourceStream;
    use symphonia::core::meta::MetadataOptions;

    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let mut format = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            source,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| format!("not a kind of audio decoded here: {e}"))?;
    let track = format
        .default_track(TrackType::Audio)
        .ok_or("no audio track")?;
    let track_id = track.id;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or("no audio track")?;
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(params, &AudioDecoderOptions::default())
        .map_err(|e| format!("no decoder for it: {e}"))?;
    let mut mono: Vec<f32> = Vec::new();
    let mut rate = 0;
    let mut interleaved: Vec<f32> = Vec::new();
    while let Some(packet) = format
        .next_packet()
        .map_err(|e| format!("an unreadable audio file: {e}"))?
    {
        if packet.track_id != track_id {
            continue;
        }
        let buffer = match decoder.decode(&packet) {
            Ok(buffer) => buffer,
            // A damaged packet is skipped, as players do.
            Err(symphonia::core::errors::Error::DecodeError(_)) => continue,
            Err(e) => return Err(format!("an unreadable audio file: {e}")),
        };
        rate = buffer.spec().rate();
        let channels = buffer.spec().channels().count().max(1);
        interleaved.resize(buffer.samples_interleaved(), 0.0);
        buffer.copy_to_slice_interleaved(&mut interleaved);
        mono.extend(
            interleaved
                .chunks_exact(channels)
                .map(|frame| frame.iter().sum::<f32>() / channels as f32),
        );
        if rate > 0
            && mono.len() as u64 * u64::from(RATE)
                > (max as u64 + u64::from(RATE)) * u64::from(rate)
        {
            return Err(too_long(max));
        }
    }
    let resampled = resample(&mono, rate)?;
    if resampled.len() > max {
        return Err(too_long(max));
    }
    Ok(resampled
        .into_iter()
        .map(|s| (s.clamp(-1.0, 1.0) * f32::from(i16::MAX)) as i16)
        .collect())
}

/// `samples` at `rate` resampled to 16 kHz (rubato's FFT resampler), the
/// resampler's delay cut off the start.
fn resample(samples: &[f32], rate: u32) -> Result<Vec<f32>, String> {
    use rubato::{FftFixedIn, Resampler};
    if rate == RATE || samples.is_empty() {
        return Ok(samples.to_vec());
    }
    let failed = |e: &dyn std::fmt::Display| format!("cannot resample from {rate} Hz: {e}");
    let mut resampler =
        FftFixedIn::<f32>::new(rate as usize, RATE as usize, 1024, 2, 1).map_err(|e| failed(&e))?;
    let delay = resampler.output_delay();
    let wanted = (samples.len() as u64 * u64::from(RATE) / u64::from(rate)) as usize;
    let mut out = Vec::with_capacity(wanted + delay);
    let mut at = 0;
    while samples.len() - at >= resampler.input_frames_next() {
        let next = resampler.input_frames_next();
        let chunk = resampler
            .process(&[&samples[at..at + next]], None)
            .map_err(|e| failed(&e))?;
        out.extend_from_slice(&chunk[0]);
        at += next;
    }
    let rest = resampler
        .process_partial(Some(&[&samples[at..]]), None)
        .map_err(|e| failed(&e))?;
    out.extend_from_slice(&rest[0]);
    while out.len() < wanted + delay {
        let flushed = resampler
            .process_partial(None::<&[&[f32]]>, None)
            .map_err(|e| failed(&e))?;
        if flushed[0].is_empty() {
            break;
        }
        out.extend_from_slice(&flushed[0]);
    }
    let mut out = out.split_off(delay.min(out.len()));
    out.truncate(wanted);
    Ok(out)
}

/// A canonical WAV file (RIFF, PCM, 16-bit) of interleaved `samples`.
fn wav(samples: &[i16], rate: u32, channels: u16) -> Vec<u8> {
    let data = (samples.len() * 2) as u32;
    let frame = 2 * channels;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes()); // the fmt chunk's size
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&channels.to_le_bytes());
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * u32::from(frame)).to_le_bytes()); // bytes per second
    out.extend_from_slice(&frame.to_le_bytes()); // bytes per frame
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One second of a 440 Hz tone at 44.1 kHz, stereo, as a WAV file.
    fn tone_44k_stereo() -> Vec<u8> {
        let frames: Vec<i16> = (0..44_100)
            .flat_map(|i| {
                let s =
                    ((i as f32 * 440.0 * std::f32::consts::TAU / 44_100.0).sin() * 12_000.0) as i16;
                [s, s]
            })
            .collect();
        wav(&frames, 44_100, 2)
    }

    #[test]
    fn a_stereo_44k_recording_becomes_16k_mono_of_the_same_length() {
        let decoded = to_wav(&tone_44k_stereo(), 60).unwrap();
        assert!((decoded.secs - 1.0).abs() < 0.01, "{}", decoded.secs);
        let w = &decoded.wav;
        assert_eq!(&w[..4], b"RIFF");
        assert_eq!(u16::from_le_bytes([w[22], w[23]]), 1, "mono");
        assert_eq!(u32::from_le_bytes([w[24], w[25], w[26], w[27]]), RATE);
        // The tone survives: its loudness in the middle is the source's.
        let samples: Vec<i16> = w[44..]
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let peak = samples[4_000..12_000]
            .iter()
            .map(|s| s.unsigned_abs())
            .max()
            .unwrap();
        assert!((11_000..13_000).contains(&peak), "{peak}");
    }

    #[test]
    fn too_long_or_not_audio_is_refused_with_why() {
        assert_eq!(
            to_wav(&tone_44k_stereo(), 0).unwrap_err(),
            "longer than 0 s"
        );
        let amr = b"#!AMR\n\x3c\x91\x17\x16";
        assert!(
            to_wav(amr, 60)
                .unwrap_err()
                .starts_with("not a kind of audio decoded here")
        );
    }
}
