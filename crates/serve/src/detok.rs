//! Generated ids to text, incrementally, with stop strings.
//!
//! Decoding: ids are decoded with a little left context (vLLM's prefix/read offsets), so tokenizers whose pieces
//! depend on their neighbours (SentencePiece's leading spaces, byte-level BPE's split characters) come out as
//! the whole decode would. Text that ends in an incomplete UTF-8 character (U+FFFD) waits for the next token.
//!
//! Stop strings: the text is searched after every token; at a match it is cut before the stop string. While
//! streaming, the last `longest stop − 1` bytes are held back, since they might begin a stop string.

use coil_data::Tokenizer;

pub struct TextStream {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    text: String,
    sent: usize,
    stops: Vec<String>,
    hold: usize,
    stopped: bool,
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl TextStream {
    pub fn new(stops: Vec<String>) -> Self {
        let hold = stops
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(1)
            .saturating_sub(1);
        TextStream {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            text: String::new(),
            sent: 0,
            stops,
            hold,
            stopped: false,
        }
    }

    /// Appends a generated id (not the EOS token). True when a stop string matched: the text now ends before it.
    pub fn push(&mut self, tok: &dyn Tokenizer, id: u32) -> bool {
        if self.stopped {
            return true;
        }
        self.ids.push(id);
        let before = self.text.len();
        let prefix = tok
            .decode(&self.ids[self.prefix_offset..self.read_offset])
            .unwrap_or_default();
        let full = tok
            .decode(&self.ids[self.prefix_offset..])
            .unwrap_or_default();
        if full.len() > prefix.len()
            && full.is_char_boundary(prefix.len())
            && full.starts_with(&prefix)
            && !full.ends_with('\u{FFFD}')
        {
            self.text.push_str(&full[prefix.len()..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
        }
        self.check_stops(before)
    }

    /// The sequence ended: whatever is still pending decodes as it is.
    pub fn finish(&mut self, tok: &dyn Tokenizer) {
        if self.stopped || self.read_offset == self.ids.len() {
            return;
        }
        let before = self.text.len();
        let prefix = tok
            .decode(&self.ids[self.prefix_offset..self.read_offset])
            .unwrap_or_default();
        let full = tok
            .decode(&self.ids[self.prefix_offset..])
            .unwrap_or_default();
        if full.is_char_boundary(prefix.len().min(full.len())) && full.starts_with(&prefix) {
            self.text.push_str(&full[prefix.len()..]);
        } else {
            self.text.push_str(&full);
        }
        self.read_offset = self.ids.len();
        self.check_stops(before);
    }

    fn check_stops(&mut self, before: usize) -> bool {
        if self.stops.is_empty() {
            return false;
        }
        let from = floor_boundary(&self.text, before.saturating_sub(self.hold));
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()))
            .min();
        if let Some(i) = hit {
            self.text.truncate(from + i);
            self.sent = self.sent.min(self.text.len());
            self.stopped = true;
        }
        self.stopped
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// The text not sent yet that can go now (all of it once `done` or stopped).
    pub fn take(&mut self, done: bool) -> String {
        let end = if done || self.stopped {
            self.text.len()
        } else {
            floor_boundary(&self.text, self.text.len().saturating_sub(self.hold))
        };
        if end <= self.sent {
            return String::new();
        }
        let out = self.text[self.sent..end].to_string();
        self.sent = end;
        out
    }

    /// All the text so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coil_data::tokenizer::ByteTokenizer;

    #[test]
    fn multibyte_characters_wait_for_their_last_byte() {
        let tok = ByteTokenizer;
        let mut s = TextStream::new(vec![]);
        let mut got = String::new();
        for b in "añb€".bytes() {
            s.push(&tok, b as u32);
            let piece = s.take(false);
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            got += &piece;
        }
        s.finish(&tok);
        got += &s.take(true);
        assert_eq!(got, "añb€");
    }

    #[test]
    fn stop_strings_cut_the_text_and_are_never_sent() {
        let tok = ByteTokenizer;
        let mut s = TextStream::new(vec!["STOP".into(), "\n\n".into()]);
        let mut sent = String::new();
        let mut stopped = false;
        for b in "hello STOP world".bytes() {
            stopped = s.push(&tok, b as u32);
            sent += &s.take(false);
            if stopped {
                break;
            }
        }
        assert!(stopped);
        sent += &s.take(true);
        assert_eq!(sent, "hello ");
        assert_eq!(s.text(), "hello ");
        // A partial match at the end is released when the sequence ends.
        let mut s = TextStream::new(vec!["STOP".into()]);
        for b in "abST".bytes() {
            assert!(!s.push(&tok, b as u32));
        }
        assert_eq!(s.take(false), "a");
        s.finish(&tok);
        assert_eq!(s.take(true), "bST");
    }
}
