//! The trivial worker `flowd bench exec` runs by default (`flowd bench echo-worker`):
//! answers every record with itself, in either worker protocol, as fast as it can, so
//! that the benchmark measures flowd's side of the pipe.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::ExecProtocol;
use crate::exec::batched;

/// Serves stdin to stdout until stdin ends.
pub fn run(protocol: ExecProtocol) -> std::io::Result<()> {
    let stdin = BufReader::with_capacity(256 << 10, std::io::stdin().lock());
    let stdout = BufWriter::with_capacity(256 << 10, std::io::stdout().lock());
    match protocol {
        ExecProtocol::JsonLines => json_lines(stdin, stdout),
        ExecProtocol::Batched => frames(stdin, stdout),
    }
}

#[derive(Deserialize)]
struct Request<'a> {
    id: u64,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
}

fn json_lines<R: Read>(mut input: BufReader<R>, mut out: impl Write) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return out.flush();
        }
        let request: Request<'_> = serde_json::from_slice(&line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        write!(out, "{{\"id\":{},\"values\":[", request.id)?;
        if let Some(value) = request.value {
            out.write_all(value.get().as_bytes())?;
        }
        out.write_all(b"]}\n")?;
        // Hand over the answers before waiting for more requests.
        if !input.buffer().contains(&b'\n') {
            out.flush()?;
        }
    }
}

fn frames(mut input: impl Read, mut out: impl Write) -> std::io::Result<()> {
    let mut body = Vec::new();
    let mut answer = Vec::new();
    loop {
        let mut length = [0u8; 4];
        match input.read_exact(&mut length) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return out.flush(),
            Err(e) => return Err(e),
        }
        body.resize(u32::from_le_bytes(length) as usize, 0);
        input.read_exact(&mut body)?;
        let requests = batched::decode_requests(&body)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        answer.clear();
        batched::start_frame(&mut answer);
        for r in &requests {
            answer.extend_from_slice(&r.id.to_le_bytes());
            answer.push(0);
            answer.extend_from_slice(&1u32.to_le_bytes());
            match r.key {
                None => answer.extend_from_slice(&u32::MAX.to_le_bytes()),
                Some(key) => {
                    answer.extend_from_slice(&(key.len() as u32).to_le_bytes());
                    answer.extend_from_slice(key);
                }
            }
            answer.extend_from_slice(&(r.value.len() as u32).to_le_bytes());
            answer.extend_from_slice(r.value);
        }
        batched::finish_frame(&mut answer, requests.len() as u32);
        out.write_all(&answer)?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{OutKey, Request as ExecRequest, json_lines as jl};

    #[test]
    fn echoes_json_lines() {
        let mut input = Vec::new();
        jl::encode_request(
            &mut input,
            &ExecRequest {
                id: 1,
                key: None,
                value: br#"{"a":1}"#,
            },
        );
        jl::encode_request(
            &mut input,
            &ExecRequest {
                id: 2,
                key: Some(b"k"),
                value: b"text",
            },
        );
        let mut out = Vec::new();
        json_lines(BufReader::new(&input[..]), &mut out).unwrap();
        let answers: Vec<_> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| jl::decode_answer(l).unwrap())
            .collect();
        assert_eq!(answers[0].outcome.as_ref().unwrap()[0].value, br#"{"a":1}"#);
        assert_eq!(answers[1].outcome.as_ref().unwrap()[0].value, b"text");
        assert_eq!(answers[1].outcome.as_ref().unwrap()[0].key, OutKey::Input);
    }

    #[test]
    fn echoes_batched_frames() {
        let mut input = Vec::new();
        batched::start_frame(&mut input);
        batched::push_request(
            &mut input,
            &ExecRequest {
                id: 4,
                key: Some(b"k"),
                value: b"v",
            },
        );
        batched::finish_frame(&mut input, 1);
        let mut out = Vec::new();
        frames(&input[..], &mut out).unwrap();
        let answers = batched::decode_answers(&out[4..]).unwrap();
        assert_eq!(answers[0].id, 4);
        let records = answers[0].outcome.as_ref().unwrap();
        assert_eq!(
            (&records[0].key, &records[0].value[..]),
            (&OutKey::Set(Some(b"k".to_vec())), &b"v"[..])
        );
    }
}
