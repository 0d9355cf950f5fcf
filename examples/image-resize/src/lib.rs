//! Decodes a PNG or JPEG, resizes it and encodes the result.
use std::io::Cursor;

use image::imageops::FilterType;
use image::{ImageFormat, ImageReader, Limits};
use perch_sdk::prelude::*;

perch_sdk::export!(handle);

const MAX_SIDE: u32 = 4096;
const MAX_INPUT_PIXELS: u64 = 40_000_000;

async fn handle(mut req: Request) -> Result<Response> {
    if req.method() != Method::POST {
        return Ok(Response::from_text(
            "POST a PNG or JPEG to /?w=WIDTH&h=HEIGHT[&fit=fill][&format=png|jpeg][&quality=1..100]\n",
        ));
    }
    let w = side(&req, "w")?;
    let h = side(&req, "h")?;
    if w.is_none() && h.is_none() {
        return Err(Error::bad_request("give w, h or both"));
    }
    let fill = match req.query("fit").as_deref() {
        None | Some("contain") => false,
        Some("fill") => true,
        Some(other) => {
            return Err(Error::bad_request(format!(
                "fit must be contain or fill, not `{other}`"
            )));
        }
    };
    let quality = match req.query("quality") {
        None => 80,
        Some(q) => q
            .parse::<u8>()
            .ok()
            .filter(|q| (1..=100).contains(q))
            .ok_or_else(|| Error::bad_request("quality must be 1 to 100"))?,
    };
    let body = req.bytes().await?;
    let input_format = image::guess_format(&body)
        .ok()
        .filter(|f| matches!(f, ImageFormat::Png | ImageFormat::Jpeg))
        .ok_or_else(unsupported)?;
    let output_format = match req.query("format").as_deref() {
        None => input_format,
        Some("png") => ImageFormat::Png,
        Some("jpeg" | "jpg") => ImageFormat::Jpeg,
        Some(other) => {
            return Err(Error::bad_request(format!(
                "format must be png or jpeg, not `{other}`"
            )));
        }
    };

    // Read the header alone (no allocation limits yet: they would refuse a
    // huge image as undecodable), then refuse it by its size.
    let mut reader = ImageReader::with_format(Cursor::new(&body[..]), input_format);
    reader.no_limits();
    let (in_w, in_h) = reader.into_dimensions().map_err(|_| unsupported())?;
    if u64::from(in_w) * u64::from(in_h) > MAX_INPUT_PIXELS {
        return Err(Error::new(
            StatusCode::BAD_REQUEST,
            "image_too_large",
            format!("{in_w}x{in_h} is over {MAX_INPUT_PIXELS} pixels"),
        ));
    }
    reader = ImageReader::with_format(Cursor::new(&body[..]), input_format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(in_w);
    limits.max_image_height = Some(in_h);
    reader.limits(limits);
    let img = reader.decode().map_err(|_| unsupported())?;

    let (out_w, out_h) = match (w, h) {
        (Some(w), Some(h)) if fill => (w, h),
        (Some(w), Some(h)) => fit(in_w, in_h, w, h),
        (Some(w), None) => fit(in_w, in_h, w, MAX_SIDE),
        (None, Some(h)) => fit(in_w, in_h, MAX_SIDE, h),
        (None, None) => unreachable!("checked above"),
    };
    let resized = img.resize_exact(out_w, out_h, FilterType::Triangle);

    let mut out = Vec::new();
    let content_type = match output_format {
        ImageFormat::Jpeg => {
            let rgb = resized.to_rgb8();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality)
                .encode_image(&rgb)
                .map_err(|e| Error::internal(format!("encoding jpeg: {e}")))?;
            "image/jpeg"
        }
        _ => {
            resized
                .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
                .map_err(|e| Error::internal(format!("encoding png: {e}")))?;
            "image/png"
        }
    };
    Ok(Response::from_bytes(out, content_type)
        .with_header("x-original-size", format!("{in_w}x{in_h}")))
}

fn unsupported() -> Error {
    Error::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_image",
        "the body is not a PNG or JPEG image",
    )
}

fn side(req: &Request, name: &str) -> Result<Option<u32>> {
    req.query(name)
        .map(|v| {
            v.parse::<u32>()
                .ok()
                .filter(|s| (1..=MAX_SIDE).contains(s))
                .ok_or_else(|| Error::bad_request(format!("{name} must be 1 to {MAX_SIDE}")))
        })
        .transpose()
}

/// The largest size with the input's aspect ratio that fits in `max_w`×`max_h`.
fn fit(in_w: u32, in_h: u32, max_w: u32, max_h: u32) -> (u32, u32) {
    let scale = f64::min(
        f64::from(max_w) / f64::from(in_w),
        f64::from(max_h) / f64::from(in_h),
    );
    let w = (f64::from(in_w) * scale)
        .round()
        .clamp(1.0, f64::from(MAX_SIDE)) as u32;
    let h = (f64::from(in_h) * scale)
        .round()
        .clamp(1.0, f64::from(MAX_SIDE)) as u32;
    (w, h)
}
