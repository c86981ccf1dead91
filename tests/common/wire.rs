//! HTTP/1.1 on a raw socket, for tests that must send or answer what a well-behaved client or
//! server would not: a message head read whole, responses framed as a client frames them.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// A message head (request or response): its first line and its header lines, in order.
#[derive(Debug)]
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The values of the header `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(field, _)| field.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
            .collect()
    }

    /// The request target (second word of a request line).
    pub fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    /// The status code of a response line, or 0.
    pub fn status(&self) -> u16 {
        self.target().parse().unwrap_or(0)
    }
}

/// A response as a client reads it off the wire.
#[derive(Debug)]
pub struct WireResponse {
    pub head: Head,
    pub body: Vec<u8>,
}

impl WireResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one message head; `None` at a clean end of stream before any byte of it.
pub async fn read_head<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> io::Result<Option<Head>> {
    let mut start = String::new();
    if reader.read_line(&mut start).await? == 0 {
        return Ok(None);
    }
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(Some(Head {
        start: start.trim_end_matches(['\r', '\n']).to_owned(),
        headers,
    }))
}

/// Reads one response, framed as RFC 9112 §6.3 tells a client: chunked when the last transfer
/// coding is chunked, else by Content-Length, else until the connection closes.
pub async fn read_response<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> io::Result<WireResponse> {
    let head = read_head(reader)
        .await?
        .ok_or(io::ErrorKind::UnexpectedEof)?;
    let chunked = head.all("transfer-encoding").last().is_some_and(|codings| {
        codings
            .rsplit(',')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        read_chunked(reader).await?
    } else if let Some(length) = head.all("content-length").first() {
        let length = length
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content-length"))?;
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        body
    } else {
        let mut body = Vec::new();
        reader.read_to_end(&mut body).await?;
        body
    };
    Ok(WireResponse { head, body })
}

async fn read_chunked<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).await?;
        let size = size.trim().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
        if size == 0 {
            // Trailers, if any, up to the empty line.
            while read_line_len(reader).await? > 2 {}
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).await?;
        read_line_len(reader).await?;
    }
}

async fn read_line_len<R: AsyncRead + Unpin>(reader: &mut BufReader<R>) -> io::Result<usize> {
    let mut line = String::new();
    reader.read_line(&mut line).await
}

/// Reads and discards until the peer closes the connection (or resets it).
pub async fn read_until_closed<R: AsyncRead + Unpin>(reader: &mut R) {
    let mut buf = [0; 1024];
    while matches!(reader.read(&mut buf).await, Ok(read) if read > 0) {}
}
