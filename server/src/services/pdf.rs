//! The monthly note as a PDF a clinician can sign (pdf-writer), in DejaVu Sans embedded as a
//! subset (`server/fonts/`, Bitstream Vera licence): any name — José, Nguyễn, Zoë, Øyvind, Müller
//! — prints as written and is extracted back as written (a ToUnicode map goes with the font).
//! A character the font lacks prints as `?`.

use std::collections::BTreeMap;

use pdf_writer::types::{CidFontType, FontFlags, SystemInfo, UnicodeCmap};
use pdf_writer::{Content, Filter, Finish, Name, Pdf, Rect, Ref, Str};

const LINES_PER_PAGE: usize = 56;
const FONT_SIZE: f32 = 9.5;
const TITLE_SIZE: f32 = 12.0;
/// DejaVu Sans (the Bitstream Vera licence: `server/fonts/DejaVuSans-LICENSE`).
const FONT: &[u8] = include_bytes!("../../fonts/DejaVuSans.ttf");
const FONT_NAME: &[u8] = b"RNDSAA+DejaVuSans";

/// Wrap long lines at about `width` characters.
fn wrap(lines: &[String], width: usize) -> Vec<String> {
    let mut out = Vec::new();
    for l in lines {
        let indent: String = l.chars().take_while(|c| *c == ' ').collect();
        let mut cur = String::new();
        for word in l.split(' ') {
            if cur.chars().count() + word.chars().count() + 1 > width && !cur.trim().is_empty() {
                out.push(cur);
                cur = format!("{indent}    ");
            }
            if !cur.is_empty() && !cur.ends_with(' ') {
                cur.push(' ');
            }
            cur.push_str(word);
        }
        out.push(cur);
    }
    out
}

/// The glyphs a document uses: each character to its glyph in the subset (its CID).
struct Glyphs<'f> {
    face: ttf_parser::Face<'f>,
    remapper: subsetter::GlyphRemapper,
    /// New glyph id → (the character, its advance in 1/1000 em).
    used: BTreeMap<u16, (char, f32)>,
}

impl<'f> Glyphs<'f> {
    fn new(face: ttf_parser::Face<'f>) -> Glyphs<'f> {
        let mut remapper = subsetter::GlyphRemapper::new();
        remapper.remap(0);
        Glyphs {
            face,
            remapper,
            used: BTreeMap::new(),
        }
    }

    /// The text as 2-byte CIDs (Identity-H).
    fn encode(&mut self, text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() * 2);
        for c in text.chars() {
            let c = match c {
                '\t' => ' ',
                c if c.is_control() => '?',
                c => c,
            };
            let (c, old) = match self.face.glyph_index(c) {
                Some(g) => (c, g),
                None => ('?', self.face.glyph_index('?').unwrap_or_default()),
            };
            let new = self.remapper.remap(old.0);
            let per_em = f32::from(self.face.units_per_em().max(1));
            let advance =
                f32::from(self.face.glyph_hor_advance(old).unwrap_or_default()) * 1000.0 / per_em;
            self.used.entry(new).or_insert((c, advance));
            out.extend_from_slice(&new.to_be_bytes());
        }
        out
    }
}

/// Render lines of text as a PDF (US letter, several pages if needed).
pub fn render(title: &str, lines: &[String]) -> Vec<u8> {
    let lines = wrap(lines, 100);
    let pages: Vec<&[String]> = lines.chunks(LINES_PER_PAGE).collect();
    let Ok(face) = ttf_parser::Face::parse(FONT, 0) else {
        // The font is part of the binary: this cannot happen short of a broken build.
        tracing::error!("the embedded font does not parse");
        return Vec::new();
    };
    let mut glyphs = Glyphs::new(face);
    let mut pdf = Pdf::new();
    let catalog = Ref::new(1);
    let tree = Ref::new(2);
    let (font, cid_font, descriptor, font_file, to_unicode) = (
        Ref::new(3),
        Ref::new(4),
        Ref::new(5),
        Ref::new(6),
        Ref::new(7),
    );
    let page_ids: Vec<Ref> = (0..pages.len())
        .map(|i| Ref::new(10 + 2 * i as i32))
        .collect();
    pdf.catalog(catalog).pages(tree);
    pdf.pages(tree)
        .kids(page_ids.iter().copied())
        .count(pages.len() as i32);
    for (i, chunk) in pages.iter().enumerate() {
        let page_id = page_ids[i];
        let content_id = Ref::new(11 + 2 * i as i32);
        let mut page = pdf.page(page_id);
        page.media_box(Rect::new(0.0, 0.0, 612.0, 792.0));
        page.parent(tree);
        page.contents(content_id);
        page.resources().fonts().pair(Name(b"F1"), font);
        page.finish();
        let mut c = Content::new();
        c.begin_text();
        c.set_font(Name(b"F1"), TITLE_SIZE);
        c.next_line(54.0, 750.0);
        c.show(Str(&glyphs.encode(title)));
        c.set_font(Name(b"F1"), FONT_SIZE);
        c.set_leading(12.0);
        c.next_line(0.0, -20.0);
        for l in chunk.iter() {
            c.show(Str(&glyphs.encode(l)));
            c.next_line_using_leading();
        }
        c.next_line(0.0, -6.0);
        c.show(Str(&glyphs.encode(&format!(
            "Page {} of {}",
            i + 1,
            pages.len()
        ))));
        c.end_text();
        pdf.stream(content_id, &c.finish());
    }
    // The font: a Type 0 font over a CIDFontType2 subset, CID = glyph id of the subset.
    let system = SystemInfo {
        registry: Str(b"Adobe"),
        ordering: Str(b"Identity"),
        supplement: 0,
    };
    pdf.type0_font(font)
        .base_font(Name(FONT_NAME))
        .encoding_predefined(Name(b"Identity-H"))
        .descendant_font(cid_font)
        .to_unicode(to_unicode);
    {
        let mut cid = pdf.cid_font(cid_font);
        cid.subtype(CidFontType::Type2)
            .base_font(Name(FONT_NAME))
            .system_info(system)
            .font_descriptor(descriptor)
            .default_width(0.0)
            .cid_to_gid_map_predefined(Name(b"Identity"));
        let mut widths = cid.widths();
        for (gid, (_, w)) in &glyphs.used {
            widths.consecutive(*gid, [*w]);
        }
        widths.finish();
        cid.finish();
    }
    let face = &glyphs.face;
    let per_em = f32::from(face.units_per_em().max(1));
    let scale = |v: i16| f32::from(v) * 1000.0 / per_em;
    let bbox = face.global_bounding_box();
    pdf.font_descriptor(descriptor)
        .name(Name(FONT_NAME))
        .flags(FontFlags::NON_SYMBOLIC)
        .bbox(Rect::new(
            scale(bbox.x_min),
            scale(bbox.y_min),
            scale(bbox.x_max),
            scale(bbox.y_max),
        ))
        .italic_angle(0.0)
        .ascent(scale(face.ascender()))
        .descent(scale(face.descender()))
        .cap_height(scale(face.capital_height().unwrap_or(face.ascender())))
        .stem_v(80.0)
        .font_file2(font_file);
    let subset = subsetter::subset(FONT, 0, &glyphs.remapper).unwrap_or_else(|e| {
        tracing::error!(error = ?e, "font subsetting failed; embedding the whole font");
        FONT.to_vec()
    });
    let compressed = deflate(&subset);
    pdf.stream(font_file, &compressed)
        .filter(Filter::FlateDecode)
        .pair(Name(b"Length1"), subset.len() as i32);
    let mut cmap = UnicodeCmap::new(Name(b"Custom"), system);
    for (gid, (c, _)) in &glyphs.used {
        cmap.pair(*gid, *c);
    }
    pdf.cmap(to_unicode, &cmap.finish());
    pdf.finish()
}

fn deflate(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_in_any_latin_script_gets_its_own_glyphs() {
        let face = ttf_parser::Face::parse(FONT, 0).unwrap();
        let mut g = Glyphs::new(face);
        let names = "José Nguyễn Zoë Øyvind Müller";
        let encoded = g.encode(names);
        assert_eq!(encoded.len(), names.chars().count() * 2);
        let question = g.face.glyph_index('?').unwrap();
        for c in names.chars() {
            assert_ne!(g.face.glyph_index(c), None, "{c} is in the font");
            assert_ne!(g.face.glyph_index(c), Some(question));
        }
        // A character the font lacks prints as '?'.
        let before = g.used.len();
        g.encode("\u{10FFFD}");
        assert!(g.used.values().any(|(c, _)| *c == '?'));
        assert!(g.used.len() <= before + 1);
    }

    #[test]
    fn the_font_is_a_subset() {
        let pdf = render("Note", &["José Nguyễn".to_string()]);
        assert!(pdf.len() < FONT.len() / 4, "{} bytes", pdf.len());
    }
}
